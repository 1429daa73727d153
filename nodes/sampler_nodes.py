"""LEDITS Sampler (the edit) and LEDITS Guider (the same edit for SamplerCustomAdvanced)."""

from __future__ import annotations

import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io
from comfy_execution.utils import get_executing_context

from ..ledits_core import MASK_MODES
from .guider import blend_step, check_keep_photo, edit_guider, edit_sampler
from .host_model import model_kind
from .live_preview import make_step_listener
from .objects import LeditsInversion, LeditsMasks
from .prompt_edit_node import check_prompt_edit
from .types import CATEGORY, LeditsConceptsType, LeditsInversionType, LeditsMasksType, LeditsPromptEditType

MASK_MODE_TOOLTIP = ("Where each edit may act. intersect (recommended): attention map AND noise map; attention: "
                     "cross-attention only; noise: noise-estimate only; none: everywhere.")


def check_compatible(model, inversion: LeditsInversion) -> None:
    """Raise before any work if the MODEL is not the kind the inversion was made with."""
    if not isinstance(inversion, LeditsInversion):
        raise ValueError("expected a LEDITS_INVERSION from the LEDITS Inversion node")
    kind = model_kind(model)
    if kind != inversion.kind:
        raise ValueError(f"the inversion was made with a {inversion.kind.describe()} model, this MODEL is "
                         f"{kind.describe()}: connect the same checkpoint, or re-run LEDITS Inversion with this one")


KEEP_PHOTO_TOOLTIP = ("Off (LEDITS++ as published): an edit may change the whole image a little. On: wherever no "
                      "edit's mask has acted (in any step so far; a prompt edit's local blend counts as its mask), the "
                      "photo's own latent, exactly, after every step. Keeps the rest of the photo untouched.")


def check_edit(model, inversion: LeditsInversion, mask_mode: str, prompt_edit=None, concepts=None,
               keep_photo: bool = False) -> None:
    """Every check the Sampler and the Guider make before any work."""
    check_compatible(model, inversion)
    if mask_mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mask_mode!r}; choose one of {', '.join(MASK_MODES)}")
    if prompt_edit is not None:
        check_prompt_edit(inversion, prompt_edit)
    if keep_photo:
        check_keep_photo(inversion, concepts, mask_mode, prompt_edit)


def run_edit(model, inversion: LeditsInversion, concepts, mask_mode: str = "intersect", prompt_edit=None,
             keep_photo: bool = False):
    """Edit: replay the inversion with LEDITS++ guidance (and a prompt edit). Returns (raw latent, LeditsMasks).
    keep_photo: keep_photo_outside_masks (LeditsGuider.post_step)."""
    check_edit(model, inversion, mask_mode, prompt_edit, concepts, keep_photo)
    concepts = list(concepts or ())
    guider = edit_guider(model, inversion, concepts, mask_mode, prompt_edit, keep_photo)
    labels = [c.label for c in concepts] + ([prompt_edit.blend_label] if guider.prompt and guider.prompt.blend else [])
    context = get_executing_context()
    guider.step_listener = make_step_listener(concepts, model, context.node_id if context else None,
                                              labels[len(concepts):])
    shape = inversion.latent_shape
    zeros = torch.zeros(shape)
    out = guider.sample(zeros, zeros, edit_sampler(inversion, blend_step(guider)), inversion.record.sigmas.float(),
                        callback=latent_preview.prepare_callback(model, inversion.steps),
                        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=inversion.record.settings.get("seed"))
    out = out.cpu()
    # local blend, keep_photo_outside_masks: outside, the photo itself (bitwise, not through the latent format's
    # scaling)
    region = guider.kept_region()
    if region is None and guider.prompt is not None and guider.prompt.mask is not None:
        region = guider.prompt.mask.cpu() > 0.5
    if region is not None:
        out = torch.where(region, out, inversion.photo.to(out.dtype))
    masks = LeditsMasks(labels, inversion.steps, tuple(shape[-2:]), int(shape[0]), dict(guider.guidance.masks))
    return out, masks


def edit_inputs() -> list:
    """The inputs LEDITS Sampler and LEDITS Guider share (same names, so workflows can swap one for the other)."""
    return [
        io.Model.Input("model", tooltip="The same MODEL the inversion was made with (LoRAs are fine)."),
        LeditsInversionType.Input("inversion", tooltip="From LEDITS Inversion."),
        LeditsConceptsType.Input("concepts", optional=True,
                                 tooltip="From LEDITS Concept Edit. Leave empty to reconstruct the photo."),
        io.Combo.Input("mask_mode", options=list(MASK_MODES), default="intersect", tooltip=MASK_MODE_TOOLTIP),
        LeditsPromptEditType.Input("prompt_edit", optional=True,
                                   tooltip="Optional: from LEDITS Prompt Edit (rewrite the photo's caption). Works "
                                           "alone or together with concepts."),
        io.Boolean.Input("keep_photo_outside_masks", default=False, optional=True, tooltip=KEEP_PHOTO_TOOLTIP),
    ]


class LeditsSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeditsSampler",
            display_name="LEDITS Sampler",
            category=CATEGORY,
            description="Regenerates the inverted photo while applying the chained concept edits, each only "
                        "where it belongs. With no concepts it returns the photo unchanged.",
            inputs=edit_inputs(),
            outputs=[io.Latent.Output(display_name="latent"), LeditsMasksType.Output(display_name="masks")],
        )

    @classmethod
    def execute(cls, model, inversion, mask_mode, concepts=None, prompt_edit=None,
                keep_photo_outside_masks=False) -> io.NodeOutput:
        samples, masks = run_edit(model, inversion, concepts, mask_mode, prompt_edit, keep_photo_outside_masks)
        return io.NodeOutput({"samples": samples}, masks)


class LeditsDisabledNoise:
    """NOISE for SamplerCustomAdvanced: LEDITS++ starts from the inversion's own state, not from fresh noise."""

    seed = 0

    def generate_noise(self, input_latent):
        samples = input_latent["samples"]
        return torch.zeros(samples.shape, dtype=samples.dtype, layout=samples.layout, device="cpu")


class LeditsGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeditsGuider",
            display_name="LEDITS Guider",
            category=CATEGORY,
            description="The LEDITS Sampler's edit as parts for SamplerCustomAdvanced: connect GUIDER, SAMPLER, "
                        "SIGMAS and NOISE there, with the photo's latent. Gives the same latent as LEDITS Sampler.",
            inputs=edit_inputs(),
            outputs=[io.Guider.Output(display_name="guider"), io.Sampler.Output(display_name="sampler"),
                     io.Sigmas.Output(display_name="sigmas"), io.Noise.Output(display_name="noise")],
        )

    @classmethod
    def execute(cls, model, inversion, mask_mode, concepts=None, prompt_edit=None,
                keep_photo_outside_masks=False) -> io.NodeOutput:
        check_edit(model, inversion, mask_mode, prompt_edit, concepts, keep_photo_outside_masks)
        guider = edit_guider(model, inversion, list(concepts or ()), mask_mode, prompt_edit, keep_photo_outside_masks)
        return io.NodeOutput(guider, edit_sampler(inversion, blend_step(guider)), inversion.record.sigmas.float(),
                             LeditsDisabledNoise())
