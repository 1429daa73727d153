"""LEDITS Toy Model: the small model trained on coloured shapes, to try the pack without a checkpoint."""

from __future__ import annotations

from comfy_api.latest import io

from .toy_model import IMAGE_SIZE, load_toy_model
from .types import CATEGORY


class LeditsToyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeditsToyModel",
            display_name="LEDITS Toy Model (demo)",
            category=f"{CATEGORY}/demo",
            description="A small SD1.x-style model (about 10 MB) trained in this pack on a toy world: one or two "
                        f"red, green or blue circles and squares on a light background, {IMAGE_SIZE}x{IMAGE_SIZE} "
                        "px. It knows only words like 'a red circle and a blue square'. Use it to try LEDITS++ "
                        "without a checkpoint; it is not a photo model.",
            inputs=[],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The toy UNet (SD1.x layout, epsilon prediction)."),
                     io.Clip.Output(display_name="CLIP", tooltip="CLIP's tokenizer with the toy text encoder."),
                     io.Vae.Output(display_name="VAE", tooltip="The toy VAE: 4x downscale (a 128 px image is a "
                                                              "32x32 latent).")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(*load_toy_model())
