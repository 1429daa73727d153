"""Cross-attention capture for the M1 mask through the host's attn2 replace patches."""

from __future__ import annotations

import logging

import torch

from ..ledits_core import AttentionAccumulator
from ..ledits_core.p2p import fold_repeats

log = logging.getLogger(__name__)


def head_averaged_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) averaged over heads, float32.  q (b, Nq, H*d), k (b, Nk, H*d) -> (b, Nq, Nk)."""
    b, nq, inner = q.shape
    d = inner // heads
    qh = q.float().view(b, nq, heads, d).transpose(1, 2)
    kh = k.float().view(b, k.shape[1], heads, d).transpose(1, 2)
    return torch.softmax(qh @ kh.transpose(-1, -2) * d**-0.5, dim=-1).mean(1)


class AttentionCapture:
    """Shared by the attn2 patches of one guider: which batch chunk is which concept, and the accumulator.

    cond_to_concept maps an index of the conds list given to calc_cond_batch to a concept index; the
    host reports, per batch chunk, that index in extra_options["cond_or_uncond"].
    """

    def __init__(self, token_positions: dict[int, list[int]], context_lens: dict[int, int]):
        self.token_positions = token_positions
        self.context_lens = context_lens
        self.cond_to_concept: dict[int, int] = {}
        self.accumulator: AttentionAccumulator | None = None
        self.enabled = False
        self.layers_seen = 0

    def begin_step(self, cond_to_concept: dict[int, int]) -> None:
        self.cond_to_concept = dict(cond_to_concept)
        self.accumulator = None
        self.layers_seen = 0

    def end_step(self) -> dict[int, torch.Tensor]:
        maps = self.accumulator.end_step() if self.accumulator is not None else {}
        self.accumulator = None
        return maps

    def record(self, q: torch.Tensor, k: torch.Tensor, extra_options: dict) -> None:
        """Add this layer's attention of every concept chunk in the batch to the accumulator."""
        chunks = extra_options.get("cond_or_uncond") or []
        shape = extra_options.get("activations_shape")
        if not chunks or shape is None or q.shape[0] % len(chunks):
            return
        hw = (int(shape[-2]), int(shape[-1]))
        if hw[0] * hw[1] != q.shape[1]:
            return
        if self.accumulator is None:
            self.accumulator = AttentionAccumulator(self.token_positions, hw)
        elif self.accumulator.target_hw != hw:
            return
        self.layers_seen += 1
        per = q.shape[0] // len(chunks)
        for j, cond_index in enumerate(chunks):
            concept = self.cond_to_concept.get(cond_index)
            if concept is None:
                continue
            rows = slice(j * per, (j + 1) * per)
            probs = head_averaged_probs(q[rows], k[rows], extra_options["n_heads"])
            self.accumulator.add(concept, fold_repeats(probs, self.context_lens[concept]))

    def patch(self, previous=None):
        """An attn2 replace fn(q, k, v, extra_options): records, then computes the output as before."""
        def ledits_attn2(q, k, v, extra_options):
            if self.enabled:
                self.record(q, k, extra_options)
            if previous is not None:
                return previous(q, k, v, extra_options)
            from comfy.ldm.modules.attention import optimized_attention
            return optimized_attention(q, k, v, extra_options["n_heads"],
                                       attn_precision=extra_options.get("attn_precision"),
                                       transformer_options=extra_options)
        return ledits_attn2


def patched_clone(model, capture: AttentionCapture, blocks: list[tuple[str, int]]):
    """model.clone() with the capture patch on each block, chained onto any attn2 replace already there."""
    m = model.clone()
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for name, number in blocks:
        m.set_model_attn2_replace(capture.patch(existing.get((name, number))), name, number)
        for key, fn in existing.items():
            if len(key) == 3 and key[:2] == (name, number):
                m.set_model_attn2_replace(capture.patch(fn), name, number, key[2])
    return m
