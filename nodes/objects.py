"""The values that travel on LEDITS++ links: an inversion, a list of concepts, the masks of a run."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..ledits_core import InversionRecord, StepMasks
from ..ledits_core.p2p import CrossAttentionEdit

CONCEPT_COLOURS = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
)
"""One colour per concept, in chain order; the live preview and the mask preview share them."""


def concept_colour(index: int) -> tuple[int, int, int]:
    return CONCEPT_COLOURS[index % len(CONCEPT_COLOURS)]


@dataclass(frozen=True)
class ModelKind:
    """What an inversion is tied to: the model family, its prediction type and its latent format."""

    family: str
    prediction: str
    latent_format: str
    distilled: bool = False
    """Guidance-distilled (Flux.1-dev): no real unconditional branch; directions are taken from the base."""

    def describe(self) -> str:
        what = "flow-matching" if self.prediction == "flow" else f"{self.prediction}-prediction"
        return f"{self.family} ({what}{', guidance-distilled' if self.distilled else ''}, {self.latent_format} latents)"


@dataclass(frozen=True)
class LeditsInversion:
    """LEDITS_INVERSION: the core record (model-space latents, CPU) plus what sampling must reuse.

    uncond / source are host CONDITIONING lists; the sampler uses the very same ones so that an edit
    without concepts reproduces the input.
    """

    record: InversionRecord
    kind: ModelKind
    latent_shape: tuple
    uncond: list
    source: list | None = None
    source_scale: float = 0.0
    scheduler: str = "karras"
    skip: float = 0.15
    photo: torch.Tensor | None = None
    """The inverted latent itself (raw, CPU): Prompt-to-Prompt's source row and local blend start from it."""

    @property
    def steps(self) -> int:
        return self.record.steps


@dataclass(frozen=True)
class LeditsConcept:
    """One edit. token_positions index the concept's own cross-attention context (length context_len)."""

    label: str
    conditioning: list
    token_positions: tuple
    context_len: int
    scale: float = 5.0
    threshold: float = 0.9
    reverse: bool = False
    warmup: float = 0.0
    cooldown: float = 1.0
    mask: torch.Tensor | None = None

    def step_window(self, steps: int) -> tuple[int, int]:
        """(first step, step after the last) that this concept acts on, from its warmup/cooldown fractions."""
        return int(round(self.warmup * steps)), int(round(self.cooldown * steps))


@dataclass(frozen=True)
class LeditsPromptEdit:
    """LEDITS_PROMPT_EDIT: a Prompt-to-Prompt edit of the photo's caption (source) into the target.

    source_conditioning is checked against the inversion's source; cross says how the target's
    cross-attention columns take the source's (swap / aligned refinement) and their re-weighting factors.
    blend_source / blend_target: token positions of the local-blend words (empty: no local blend).
    """

    source_text: str
    target_text: str
    source_conditioning: list
    target_conditioning: list
    cross: CrossAttentionEdit
    source_len: int
    scale: float = 7.5
    cross_replace: float = 0.8
    self_replace: float = 0.4
    reweight: tuple = ()
    blend_words: tuple = ()
    blend_source: tuple = ()
    blend_target: tuple = ()
    blend_threshold: float = 0.3

    @property
    def target_len(self) -> int:
        return self.cross.length

    @property
    def mode(self) -> str:
        return "word swap" if self.cross.swap else "refinement"

    @property
    def blend_label(self) -> str:
        return "local blend: " + " ".join(self.blend_words) if self.blend_words else ""


@dataclass
class LeditsMasks:
    """LEDITS_MASKS: per step, per concept, the attention (M1), noise (M2) and final masks of a run."""

    labels: list
    steps: int
    latent_hw: tuple
    batch: int
    per_step: dict = field(default_factory=dict)

    def stack(self, which: str, concept: int, first: int, last: int) -> torch.Tensor | None:
        """Mean over steps first..last (inclusive) of one mask kind: (B, H, W) float32, None if never computed."""
        maps = []
        for step in range(first, last + 1):
            masks: StepMasks | None = self.per_step.get(step, {}).get(concept)
            m = getattr(masks, which) if masks is not None else None
            if m is not None:
                maps.append(m[:, 0].float())
        return torch.stack(maps).mean(0) if maps else None
