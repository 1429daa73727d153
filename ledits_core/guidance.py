"""Semantic guidance of LEDITS++: per-concept masked, scaled differences to the unconditional prediction.

The formulas are affine, so they hold alike for noise predictions (eps) and denoised predictions (D):
guided = base + sum_c [active_c] * scale_c * (+-1) * user_mask_c * mask_c * (pred_c - uncond).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .masks import MASK_MODES, attention_mask, combine_masks, noise_mask


@dataclass
class ConceptSpec:
    """One edit: scale (>= 0), threshold in [0, 1], reverse (remove instead of add), and the steps it acts on.

    It acts on steps warmup <= i < cooldown (cooldown None = to the end). user_mask: (B or 1, 1, H, W) or None.
    """

    scale: float = 5.0
    threshold: float = 0.9
    reverse: bool = False
    warmup: int = 0
    cooldown: int | None = None
    user_mask: torch.Tensor | None = None
    label: str = ""

    def active(self, step: int) -> bool:
        """Whether this concept contributes (and so needs a model evaluation) at this step."""
        ends = self.cooldown is None or step < self.cooldown
        return self.scale != 0 and self.warmup <= step and ends


def source_guidance(uncond: torch.Tensor, source: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance towards the source prompt: uncond + scale (source - uncond)."""
    return uncond + scale * (source - uncond)


def concept_guidance(pred: torch.Tensor, uncond: torch.Tensor, spec: ConceptSpec) -> torch.Tensor:
    """psi_c = (+-1) scale (pred_c - uncond) * user_mask, before the implicit masks.  (B, C, H, W)."""
    psi = (pred - uncond) * (-spec.scale if spec.reverse else spec.scale)
    if spec.user_mask is not None:
        psi = psi * spec.user_mask.to(psi.device, psi.dtype)
    return psi


@dataclass
class StepMasks:
    """The masks one concept had at one step, (B, 1, H, W) bool on the CPU; None where not computed."""

    attention: torch.Tensor | None
    noise: torch.Tensor | None
    final: torch.Tensor | None


class EditGuidance:
    """Applies LEDITS++ guidance step by step and records the masks it used.

    __call__(step, base, uncond, preds, attn_maps): preds {concept: (B, C, H, W)} for the active concepts,
    attn_maps {concept: (B, h, w)} token-summed cross-attention (may be missing: M1 then falls back to M2).
    """

    def __init__(self, concepts: list[ConceptSpec], mask_mode: str = "intersect", record_masks: bool = True):
        if mask_mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode {mask_mode!r}; choose one of {', '.join(MASK_MODES)}")
        self.concepts = list(concepts)
        self.mask_mode = mask_mode
        self.record_masks = record_masks
        self.masks: dict[int, dict[int, StepMasks]] = {}
        self.acted: torch.Tensor | None = None  # (B or 1, 1, H, W) bool: where any concept has acted so far

    def reset(self) -> None:
        """Forget the masks and the region acted on of a previous run."""
        self.masks = {}
        self.acted = None

    def active(self, step: int) -> list[int]:
        """Indices of the concepts that act at this step."""
        return [i for i, c in enumerate(self.concepts) if c.active(step)]

    @property
    def needs_attention(self) -> bool:
        return self.mask_mode in ("intersect", "attention") and any(c.scale != 0 for c in self.concepts)

    def concept_mask(self, spec: ConceptSpec, psi: torch.Tensor, attn_map: torch.Tensor | None) -> StepMasks:
        """M1, M2 and the final mask of one concept at one step, as float32 (B, 1, H, W)."""
        m2 = noise_mask(psi, spec.threshold) if self.mask_mode in ("intersect", "noise") else None
        m1 = None
        if attn_map is not None and self.mask_mode in ("intersect", "attention"):
            m1 = attention_mask(attn_map, spec.threshold, psi.shape[-2:]).to(psi.device)
        if self.mask_mode == "attention" and m1 is None:
            m2 = noise_mask(psi, spec.threshold)
        return StepMasks(m1, m2, combine_masks(self.mask_mode, m1, m2))

    def __call__(self, step: int, base: torch.Tensor, uncond: torch.Tensor, preds: dict[int, torch.Tensor],
                 attn_maps: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        guided = base
        attn_maps = attn_maps or {}
        for i in self.active(step):
            spec = self.concepts[i]
            psi = concept_guidance(preds[i], uncond, spec)
            masks = self.concept_mask(spec, psi, attn_maps.get(i))
            if masks.final is not None:
                psi = psi * masks.final.to(psi.device, psi.dtype)
            guided = guided + psi
            self._add_acted(psi.shape, masks.final, spec.user_mask)
            if self.record_masks:
                self.masks.setdefault(step, {})[i] = StepMasks(*(_to_bool_cpu(m) for m in
                                                                 (masks.attention, masks.noise, masks.final)))
        return guided


    def _add_acted(self, shape, final: torch.Tensor | None, user_mask: torch.Tensor | None) -> None:
        """Grow the region acted on by one concept's step: its final mask (everywhere without one) where its user
        mask is above zero."""
        region = torch.ones((1, 1, *shape[-2:]), dtype=torch.bool) if final is None else (final > 0.5).cpu()
        if user_mask is not None:
            region = region & (user_mask > 0).cpu()
        self.acted = region if self.acted is None else self.acted | region


def keep_photo_outside(x: torch.Tensor, photo_state: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """x inside ``region`` (B or 1, 1, H, W) bool, the photo's own state of this step (the inversion's) outside it;
    region None (nothing has acted yet): the photo's state everywhere. Bitwise: no arithmetic on either."""
    if region is None:
        return photo_state.to(x.device, x.dtype).expand_as(x).clone()
    return torch.where(region.to(x.device), x, photo_state.to(x.device, x.dtype))


def _to_bool_cpu(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else (mask > 0.5).cpu()
