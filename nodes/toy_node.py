"""LEDITS Toy Model: the small models trained on coloured shapes, to try the pack without a checkpoint."""

from __future__ import annotations

from comfy_api.latest import io

from .toy_model import IMAGE_SIZE, load_toy_model
from .types import CATEGORY

# What the node offers (the widget's values, kept in workflows) -> toy_model's kinds.
MODELS = {"UNet (SD1.x)": "sd15", "flow transformer (SD3)": "sd3"}
DEFAULT = "UNet (SD1.x)"


class LeditsToyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeditsToyModel",
            display_name="LEDITS Toy Model (demo)",
            category=f"{CATEGORY}/demo",
            description="A small model trained in this pack on a toy world: one or two red, green or blue circles "
                        f"and squares on a light background, {IMAGE_SIZE}x{IMAGE_SIZE} px. It knows only words like "
                        "'a red circle and a blue square'. Two of them: a UNet of SD1.x's layout (about 19 MB) and "
                        "a flow transformer of SD3's (MMDiT, about 5 MB). Use them to try LEDITS++ without a "
                        "checkpoint; they are not photo models.",
            inputs=[io.Combo.Input("model", options=list(MODELS), default=DEFAULT, optional=True,
                                   tooltip="UNet (SD1.x): the SD1.x-family toy (epsilon prediction). flow "
                                           "transformer (SD3): the SD3-family toy (flow matching); LEDITS Prompt "
                                           "Edit takes UNets only.")],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The toy UNet (SD1.x layout, epsilon prediction) "
                                                                   "or flow transformer (SD3 layout, flow matching)."),
                     io.Clip.Output(display_name="CLIP", tooltip="CLIP's tokenizer with the toy text encoder."),
                     io.Vae.Output(display_name="VAE", tooltip="The toy VAE: 4x downscale (a 128 px image is a "
                                                              "32x32 latent; 4 channels for the UNet, 16 for the "
                                                              "flow transformer).")],
        )

    @classmethod
    def execute(cls, model: str = DEFAULT) -> io.NodeOutput:
        if model not in MODELS:
            raise ValueError(f"LEDITS Toy Model: unknown model {model!r}; choose one of {list(MODELS)}")
        return io.NodeOutput(*load_toy_model(kind=MODELS[model]))
