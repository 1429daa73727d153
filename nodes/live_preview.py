"""Live previews for the LEDITS Sampler: each step's masks, tinted over the latent preview, sent to the browser.

The browser side is ``web/ledits.js``. Messages (websocket, to the client that queued the prompt only):

* ``ledits.start`` ``{node, concepts: [{index, label, reverse, scale, colour}]}``: a run begins
  (the node's old previews are cleared).
* ``ledits.step`` ``{node, step, total, concepts: [{..., active, image}]}``: once per step; ``image`` is a
  JPEG data URL (at most PREVIEW_SIDE px on the long side) of the concept's current mask (final, else
  noise) in the concept's colour over the current latent preview.

Headless runs (no web server, or no browser connected for this prompt) get no listener: nothing is
encoded or sent.
"""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .objects import concept_colour

log = logging.getLogger(__name__)

PREVIEW_SIDE = 128
"""Long side of a live preview image, in pixels (a 128 px JPEG is a few KB)."""
MASK_ALPHA = 0.6
"""Opacity of the concept colour where the mask is on; the same as the LEDITS Mask Preview's panels."""
NO_PREVIEW_GREY = 0.25


def connected_client():
    """(server, client id) when a browser that queued the running prompt is connected, else None."""
    try:
        import server
    except ImportError:
        return None
    instance = getattr(server.PromptServer, "instance", None)
    client_id = getattr(instance, "client_id", None)
    if client_id is None or client_id not in (getattr(instance, "sockets", None) or {}):
        return None
    return instance, client_id


def latent_previewer(model):
    """The host's latent previewer for this model; Latent2RGB when previews are off; None if neither exists.

    The live masks need a picture under them even when the user runs without ``--preview-method``:
    Latent2RGB is a single matrix product per step.
    """
    import latent_preview

    latent_format = model.model.latent_format
    previewer = latent_preview.get_previewer(model.load_device, latent_format)
    if previewer is None and getattr(latent_format, "latent_rgb_factors", None) is not None:
        previewer = latent_preview.Latent2RGBPreviewer(latent_format.latent_rgb_factors,
                                                       getattr(latent_format, "latent_rgb_factors_bias", None))
    return previewer


def preview_size(latent_hw) -> tuple[int, int]:
    """(height, width) of a preview: the latent's aspect ratio, PREVIEW_SIDE on the long side."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    scale = PREVIEW_SIDE / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def background(previewer, denoised: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The first image's latent preview at ``size``, (H, W, 3) float32 in [0, 1]; grey without a previewer."""
    if previewer is None:
        return torch.full((*size, 3), NO_PREVIEW_GREY)
    picture = previewer.decode_latent_to_preview(denoised[:1].detach()).convert("RGB")
    picture = picture.resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)


def tint(image: torch.Tensor, mask: torch.Tensor | None, colour) -> torch.Tensor:
    """image (H, W, 3) in [0, 1], mask (h, w) at any size or None -> the image tinted in colour where mask is on.

    Same blend as the LEDITS Mask Preview: image (1 - a) + colour a, a = MASK_ALPHA * mask.
    """
    if mask is None:
        return image
    m = F.interpolate(mask.float()[None, None], size=tuple(image.shape[:2]), mode="nearest")[0, 0]
    alpha = MASK_ALPHA * m[..., None]
    return image * (1 - alpha) + torch.tensor(colour, dtype=torch.float32) / 255.0 * alpha


def data_url(image: torch.Tensor, quality: int = 75) -> str:
    """(H, W, 3) float in [0, 1] -> ``data:image/jpeg;base64,...``."""
    buffer = io.BytesIO()
    pixels = (image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def concept_info(concepts, extra_labels=()) -> list[dict]:
    """What the browser shows per concept besides the image: name, direction, strength, colour.

    extra_labels: masks after the concepts' (a prompt edit's local blend), shown the same way.
    """
    info = [{"index": i, "label": c.label, "reverse": bool(c.reverse), "scale": float(c.scale),
             "colour": list(concept_colour(i))} for i, c in enumerate(concepts)]
    n = len(info)
    return info + [{"index": n + j, "label": label, "reverse": False, "scale": 0.0,
                    "colour": list(concept_colour(n + j))} for j, label in enumerate(extra_labels)]


class LivePreview:
    """The step listener: at most one ``ledits.step`` message per step, while the browser stays connected."""

    def __init__(self, server, client_id, node_id, concepts, previewer, extra_labels=()):
        self.server, self.client_id, self.node_id = server, client_id, node_id
        self.info = concept_info(concepts, extra_labels)
        self.previewer = previewer
        self.last_step = None

    def __call__(self, step, total_steps, masks, denoised):
        if step == self.last_step or self.server.client_id != self.client_id:
            return
        self.last_step = step
        if self.client_id not in (getattr(self.server, "sockets", None) or {}):
            return  # the browser went away: stop encoding
        try:
            data = self.message(step, total_steps, masks, denoised)
        except Exception:  # a preview must never break the edit itself
            log.warning("[LEDITS++] live preview failed at step %d; no more previews this run", step, exc_info=True)
            self.client_id = None
            return
        self.server.send_sync("ledits.step", data, self.client_id)

    def message(self, step, total_steps, masks, denoised) -> dict:
        base = background(self.previewer, denoised, preview_size(denoised.shape[-2:]))
        concepts = []
        for info in self.info:
            step_masks = masks.get(info["index"])
            mask = None
            if step_masks is not None:
                mask = step_masks.final if step_masks.final is not None else step_masks.noise
            image = tint(base, None if mask is None else mask[0, 0], info["colour"])
            concepts.append({**info, "active": step_masks is not None, "image": data_url(image)})
        return {"node": self.node_id, "step": int(step), "total": int(total_steps), "concepts": concepts}


def make_step_listener(concepts, model, node_id, extra_labels=()):
    """A LeditsGuider step listener sending live previews, or None when no browser watches this prompt.

    When a browser is connected this also sends ``ledits.start`` for the node (it clears the old previews),
    even without concepts (then there is nothing to preview and None is returned). extra_labels: masks after
    the concepts' (a prompt edit's local blend: "local blend: cat dog").
    """
    client = connected_client()
    if client is None or node_id is None:
        return None
    server, client_id = client
    concepts = list(concepts or ())
    info = concept_info(concepts, extra_labels)
    server.send_sync("ledits.start", {"node": node_id, "concepts": info}, client_id)
    if not info:
        return None
    return LivePreview(server, client_id, node_id, concepts, latent_previewer(model), extra_labels)
