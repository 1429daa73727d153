"""LEDITS Mask Preview: where each concept acted, as an overlay image and as MASKs for other nodes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui
from PIL import Image, ImageDraw

from .objects import LeditsMasks, concept_colour
from .types import CATEGORY, LeditsMasksType

MASK_KINDS = ("final", "attention", "noise")


def aggregate_masks(masks: LeditsMasks, which: str, start: int, end: int, size: tuple[int, int]) -> torch.Tensor:
    """Mean mask over steps start..end per concept, resized: (concepts, B, H, W) float32 in [0, 1]."""
    if which not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {which!r}; choose one of {', '.join(MASK_KINDS)}")
    last = masks.steps - 1 if end < 0 else min(end, masks.steps - 1)
    if start > last:
        raise ValueError(f"start step {start} is after the end step {last} (the run had {masks.steps} steps)")
    out = torch.zeros((max(len(masks.labels), 1), masks.batch, *size))
    for c in range(len(masks.labels)):
        m = masks.stack(which, c, start, last)
        if m is not None:
            out[c] = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
    return out[: len(masks.labels)]


def overlay_panels(image: torch.Tensor, agg: torch.Tensor, labels: list[str]) -> torch.Tensor:
    """Per image, one panel per concept side by side: the image tinted in the concept's colour where it acted.

    image (B, H, W, 3) in [0, 1] (host IMAGE layout, BHWC), agg (C, B, H, W) -> (B, H, W * C, 3).
    """
    rows = []
    for b in range(image.shape[0]):
        panels = []
        for c, label in enumerate(labels):
            colour = torch.tensor(concept_colour(c), dtype=torch.float32) / 255.0
            alpha = 0.6 * agg[c, b][..., None]
            tinted = image[b] * (1 - alpha) + colour * alpha
            panels.append(_label(tinted, label, concept_colour(c)))
        rows.append(torch.cat(panels, dim=1) if panels else image[b])
    return torch.stack(rows)


def _label(panel: torch.Tensor, text: str, colour) -> torch.Tensor:
    """Write the concept's name in its colour on a dark band at the top of the panel."""
    img = Image.fromarray((panel.clamp(0, 1).numpy() * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, img.width, 14], fill=(0, 0, 0))
    draw.text((3, 1), text[:40], fill=tuple(colour))
    return torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)


class LeditsMaskPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeditsMaskPreview",
            display_name="LEDITS Mask Preview",
            category=CATEGORY,
            description="Shows where each concept edited the image (one coloured panel per concept) and outputs "
                        "each concept's mask at image size for other nodes.",
            inputs=[
                LeditsMasksType.Input("masks", tooltip="From LEDITS Sampler."),
                io.Combo.Input("which", options=list(MASK_KINDS), default="final",
                               tooltip="final: the mask the edit used; attention: the cross-attention mask (M1); "
                                       "noise: the noise-estimate mask (M2)."),
                io.Int.Input("start_step", default=0, min=0, max=10000,
                             tooltip="First step to include; the masks are averaged over the steps chosen."),
                io.Int.Input("end_step", default=-1, min=-1, max=10000,
                             tooltip="Last step to include; -1 = the last step."),
                io.Image.Input("image", optional=True,
                               tooltip="Optional: the photo (or the edited image) to draw the masks over."),
            ],
            outputs=[io.Image.Output(display_name="preview", tooltip="One panel per concept, side by side."),
                     io.Mask.Output(display_name="mask", tooltip="Each concept's mask at image size (concepts x images).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, masks, which, start_step, end_step, image=None) -> io.NodeOutput:
        if not isinstance(masks, LeditsMasks):
            raise ValueError("expected LEDITS_MASKS from the LEDITS Sampler node")
        if image is None:
            h, w = masks.latent_hw
            image = torch.full((masks.batch, h * 8, w * 8, 3), 0.25)
        image = image.float().cpu()
        if image.shape[0] not in (1, masks.batch):
            raise ValueError(f"the image batch has {image.shape[0]} images, the masks {masks.batch}")
        image = image.expand(masks.batch, -1, -1, -1)
        agg = aggregate_masks(masks, which, start_step, end_step, tuple(image.shape[1:3]))
        if not masks.labels:
            return io.NodeOutput(image, torch.zeros((1, *image.shape[1:3])), ui=ui.PreviewImage(image, cls=cls))
        preview = overlay_panels(image, agg, masks.labels)
        return io.NodeOutput(preview, agg.flatten(0, 1), ui=ui.PreviewImage(preview, cls=cls))
