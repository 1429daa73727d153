"""Prompt-to-Prompt (Hertz et al., 2022) on the edit-friendly inversion, in plain torch.

The photo's caption P (the inversion's source prompt) and an edited caption P* (the target) are run as
two batch rows per step: the source row at the inversion's own state x_i = x0 + sigma_i n_i, the target
row at the edit's state. The target's attention is steered by the source's:

* word swap (same token count): M^ = M (the source's cross-attention) for steps < tau_c, else M*;
* refinement (other token counts): M^[:, j] = M[:, A(j)] where the token alignment A maps target
  column j to an equal source token, M*[:, j] where it maps to none (new tokens keep their own maps);
* re-weighting: M^[:, j] *= c_j, c_j in [-2, 2], at every step;
* self-attention: the target's self-attention probabilities := the source's, for steps < tau_s, at
  the coarse levels only;
* local blend: alpha = [max_pool3(mean attention of the blend words) / max >= k] (source and target
  words, union), then x = x_src + alpha (x - x_src) after each step.

Shapes: attention probabilities (B, heads, Nq, L) with L the context length (token columns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import AttentionAccumulator

REWEIGHT_LIMIT = 2.0
"""Re-weighting factors c must lie in [-REWEIGHT_LIMIT, REWEIGHT_LIMIT] (the paper's range)."""
BLEND_THRESHOLD = 0.3
"""The paper's k: local blend keeps the positions whose normalised word attention is >= k."""
MATCH, MISMATCH, GAP = 1, -1, -1
"""Scores of the global token alignment (Needleman-Wunsch)."""


def align_tokens(source: list, target: list) -> list[int]:
    """Global alignment of two token lists; for each target position the source position of the equal
    token aligned to it, or -1 (a new token, or one aligned to a different token).

    Needleman-Wunsch with match +1, mismatch -1, gap -1, run on the reversed lists so that among equal
    scores the earliest tokens pair up (the first end-of-text token with the first, padding left over).
    """
    n = len(source)
    reverse = _align_reversed(source[::-1], target[::-1])
    return [-1 if i < 0 else n - 1 - i for i in reverse[::-1]]


def _align_reversed(source: list, target: list) -> list[int]:
    """The alignment itself; traceback from the ends, ties prefer the diagonal, then a gap in the target."""
    n, m = len(source), len(target)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        score[i][0] = i * GAP
    for j in range(1, m + 1):
        score[0][j] = j * GAP
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = score[i - 1][j - 1] + (MATCH if source[i - 1] == target[j - 1] else MISMATCH)
            score[i][j] = max(diag, score[i - 1][j] + GAP, score[i][j - 1] + GAP)
    mapping = [-1] * m
    i, j = n, m
    while i > 0 and j > 0:
        same = source[i - 1] == target[j - 1]
        if score[i][j] == score[i - 1][j - 1] + (MATCH if same else MISMATCH):
            if same:
                mapping[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif score[i][j] == score[i - 1][j] + GAP:
            i -= 1
        else:
            j -= 1
    return mapping


def occurrences(sequence: list, part: list) -> list[int]:
    """Positions in sequence covered by every occurrence of the sub-list part (empty if none)."""
    k = len(part)
    hits = []
    for start in range(len(sequence) - k + 1 if k else 0):
        if sequence[start:start + k] == part:
            hits += range(start, start + k)
    return sorted(set(hits))


def parse_reweight(text: str) -> list[tuple[str, float]]:
    """'fluffy:2, red:-1' -> [('fluffy', 2.0), ('red', -1.0)]; raises on a bad entry or a factor outside [-2, 2]."""
    out = []
    for entry in re.split(r"[,\n;]", text or ""):
        entry = entry.strip()
        if not entry:
            continue
        word, sep, factor = entry.rpartition(":")
        try:
            value = float(factor)
        except ValueError:
            value = None
        if not sep or not word.strip() or value is None:
            raise ValueError(f"re-weighting entry {entry!r} is not 'word:factor' (e.g. 'fluffy:2, red:-1')")
        if not -REWEIGHT_LIMIT <= value <= REWEIGHT_LIMIT:
            raise ValueError(f"re-weighting factor {value:g} for {word.strip()!r} is outside "
                             f"[{-REWEIGHT_LIMIT:g}, {REWEIGHT_LIMIT:g}]")
        out.append((word.strip(), value))
    return out


def parse_words(text: str) -> list[str]:
    """'cat, dog' or 'cat dog' -> ['cat', 'dog']."""
    return [w for w in re.split(r"[\s,;]+", text or "") if w]


@dataclass(frozen=True)
class CrossAttentionEdit:
    """How the target's cross-attention is edited.  mapping (L_T,) long: source column per target column,
    -1 = keep the target's own; swap: replace all columns (same token count); factors (L_T,) or None."""

    mapping: torch.Tensor
    swap: bool
    factors: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.mapping.shape[0])


def edited_cross_attention(source: torch.Tensor | None, target: torch.Tensor, edit: CrossAttentionEdit,
                           inject: bool) -> torch.Tensor:
    """M^ from the source's M (B, h, Nq, L_S) and the target's own M* (B, h, Nq, L_T) -> (B, h, Nq, L_T).

    inject (step < tau_c): swap -> M; refinement -> M[..., A(j)] where A(j) >= 0 else M*[..., j].
    Then re-weighting M^[..., j] *= c_j. Returns `target` itself (same object) when nothing changes.
    """
    edited = target
    if inject:
        if source is None:
            raise ValueError("injecting cross-attention needs the source row's probabilities")
        if edit.swap:
            if source.shape[-1] != target.shape[-1]:
                raise ValueError(f"word swap needs equal context lengths, got {source.shape[-1]} and {target.shape[-1]}")
            edited = source
        else:
            mapping = edit.mapping.to(target.device)
            aligned = mapping >= 0
            taken = source.index_select(-1, mapping.clamp(min=0))
            edited = torch.where(aligned, taken, target)
    if edit.factors is not None:
        edited = edited * edit.factors.to(edited.device, edited.dtype)
    return edited


def head_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head, float32.  q (b, Nq, heads*d), k (b, Nk, heads*d) -> (b, heads, Nq, Nk)."""
    b, nq, inner = q.shape
    d = inner // heads
    qh = q.float().view(b, nq, heads, d).transpose(1, 2)
    kh = k.float().view(b, k.shape[1], heads, d).transpose(1, 2)
    return torch.softmax(qh @ kh.transpose(-1, -2) * d**-0.5, dim=-1)


def attention_output(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """probs (b, heads, Nq, L) @ v (b, L, heads*d) -> (b, Nq, heads*d) float32."""
    b, heads, nq, length = probs.shape
    d = v.shape[-1] // heads
    vh = v.float().view(b, length, heads, d).transpose(1, 2)
    return (probs @ vh).transpose(1, 2).reshape(b, nq, heads * d)


def fold_repeats(probs: torch.Tensor, length: int) -> torch.Tensor:
    """Sum the copies of a context the host repeated to batch it with a longer one: (..., r*L) -> (..., L)."""
    nk = probs.shape[-1]
    if nk == length:
        return probs
    if nk % length:
        raise ValueError(f"attention has {nk} keys, not a multiple of the prompt's {length} tokens")
    return probs.view(*probs.shape[:-1], nk // length, length).sum(-2)


def local_blend_mask(maps: list[torch.Tensor], latent_hw, threshold: float = BLEND_THRESHOLD) -> torch.Tensor:
    """alpha: union over maps (B, h, w) of [maxpool3(m) upsampled to latent size / its max >= k] -> (B, 1, H, W)."""
    if not maps:
        raise ValueError("local blend needs at least one attention map")
    union = None
    for m in maps:
        pooled = F.max_pool2d(m.float()[:, None], kernel_size=3, stride=1, padding=1)
        pooled = F.interpolate(pooled, size=tuple(latent_hw), mode="nearest")
        peak = pooled.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1, 1)
        binary = (pooled / peak >= threshold).float()
        union = binary if union is None else torch.maximum(union, binary)
    return union


def blend(x: torch.Tensor, x_source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x_src + alpha (x - x_src) for a binary alpha: x where alpha = 1, x_src where alpha = 0 (both bitwise).

    x, x_source (B, C, H, W), mask (B, 1, H, W) in {0, 1}.
    """
    return torch.where(mask.to(x.device) > 0.5, x, x_source)


class LocalBlend:
    """The local-blend mask: the blend words' cross-attention (source row on source tokens, target row on
    target tokens), averaged over layers per step and over the steps so far; memory one map per side."""

    def __init__(self, source_positions: list[int], target_positions: list[int],
                 threshold: float = BLEND_THRESHOLD):
        self.positions = {}
        if source_positions:
            self.positions["source"] = list(source_positions)
        if target_positions:
            self.positions["target"] = list(target_positions)
        if not self.positions:
            raise ValueError("local blend needs word positions in the source or the target prompt")
        self.threshold = float(threshold)
        self.accumulator: AttentionAccumulator | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self.steps_seen = 0

    def add(self, side: str, probs: torch.Tensor, hw: tuple[int, int]) -> None:
        """One layer's head-averaged probabilities (B, Nq, L) of the source or target row at grid hw."""
        if side not in self.positions:
            return
        if self.accumulator is None:
            self.accumulator = AttentionAccumulator(self.positions, hw)
        if self.accumulator.target_hw == tuple(hw):
            self.accumulator.add(side, probs)

    def end_step(self) -> bool:
        """Fold this step's layer means into the running sums; False if no layer was seen this step."""
        if self.accumulator is None:
            return False
        for side, m in self.accumulator.end_step().items():
            self.sums[side] = self.sums[side] + m if side in self.sums else m
        self.accumulator = None
        self.steps_seen += 1
        return True

    def mask(self, latent_hw) -> torch.Tensor | None:
        """alpha (B, 1, H, W) in {0, 1} from the steps so far; None before any attention was seen."""
        if not self.sums:
            return None
        return local_blend_mask([s / self.steps_seen for s in self.sums.values()], latent_hw, self.threshold)


class SourceTrajectory:
    """The inversion's own states x_i (= x0 + sigma_i n_i up to rounding; x_N = x0): where the source row is
    evaluated. states (N, B, C, H, W) as the inversion recorded them (bitwise what an unedited replay walks
    through, so that an unchanged prompt stays exact), x0 (B, C, H, W) the photo in model space.
    """

    def __init__(self, states: torch.Tensor, x0: torch.Tensor):
        if states is None:
            raise ValueError("the inversion has no recorded states (made by an older version): re-run it")
        self.states = states
        self.x0 = x0

    def state(self, i: int) -> torch.Tensor:
        return self.x0 if i >= self.states.shape[0] else self.states[i]


def steps_before(fraction: float, steps: int) -> int:
    """Number of leading steps a fraction in [0, 1] of the steps covers (tau_c, tau_s)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a fraction of the steps must be in [0, 1], got {fraction}")
    return int(round(fraction * steps))
