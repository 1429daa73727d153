"""M1 for flow transformers (SD3.x MMDiT, Flux.1): a concept's attention map from joint attention.

In these blocks the text tokens (first in the sequence) and the image tokens attend jointly. A concept's map
is the image queries' softmax probabilities on that concept's own text tokens, head-averaged and token-summed,
at the chosen double blocks. Captured through the host's extension points on a clone of the MODEL: a
``patches_replace["dit"]`` wrapper per chosen block hands the block a copy of ``transformer_options`` with our
``optimized_attention_override`` (chained onto any override and block replacement already there), which
records the concept rows' probabilities and then runs the attention as before. Memory is one map per concept
per step, computed one head at a time.
"""

from __future__ import annotations

import math

import torch

from ..ledits_core import AttentionAccumulator

OVERRIDE = "optimized_attention_override"


def double_blocks(model) -> list[int]:
    """The joint (double-stream) blocks whose attention gives M1: the second half of them (all of them when
    there are two or fewer).

    Chosen by measurement on the toy flow transformer (assets/toy/TRAINING_SD3.json, 4 joint blocks of the
    host's SD3 MMDiT; validation scenes, a word's attention on its object / on the other object): blocks 2 and 3
    reach 24 and 21 and put the top tenth of their map on the object every time, blocks 0 and 1 only 2.9 and 1.5
    (M1 share 0.69, 0.60): the early blocks' maps are position-blind, the later ones' follow the words. The
    middle half (blocks 1, 2), chosen before there was a trained model, would have averaged in the worst one."""
    dm = model.model.diffusion_model
    blocks = getattr(dm, "joint_blocks", None) or getattr(dm, "double_blocks", None) or []
    n = len(blocks)
    if n <= 2:
        return list(range(n))
    return list(range(n // 2, n))


def patch_size(model) -> int:
    p = getattr(model.model.diffusion_model, "patch_size", 2)
    return int(p[0] if isinstance(p, (tuple, list)) else p)


class JointAttentionCapture:
    """Shared by the block wrappers of one guider (the same interface as the UNet AttentionCapture)."""

    def __init__(self, token_positions: dict[int, list[int]], latent_hw, patch: int):
        self.token_positions = {c: torch.as_tensor(p, dtype=torch.long) for c, p in token_positions.items()}
        self.grid = tuple(math.ceil(int(s) / patch) for s in latent_hw)
        self.cond_to_concept: dict[int, int] = {}
        self.accumulator: AttentionAccumulator | None = None
        self.enabled = False
        self.layers_seen = 0
        self.blocks_seen: list[int] = []

    def begin_step(self, cond_to_concept: dict[int, int]) -> None:
        self.cond_to_concept = dict(cond_to_concept)
        self.accumulator = AttentionAccumulator(self.token_positions, self.grid)
        self.layers_seen = 0
        self.blocks_seen = []

    def end_step(self) -> dict[int, torch.Tensor]:
        maps = self.accumulator.end_step() if self.accumulator is not None and self.layers_seen else {}
        self.accumulator = None
        return maps

    def record(self, q, k, heads, skip_reshape, text_len, image_len, chunks, block) -> None:
        """Add one joint attention's image->concept-token probabilities of every concept chunk."""
        if not skip_reshape:  # (B, L, H*D) -> (B, H, L, D)
            q = q.view(q.shape[0], q.shape[1], heads, -1).transpose(1, 2)
            k = k.view(k.shape[0], k.shape[1], heads, -1).transpose(1, 2)
        if q.shape[2] != text_len + image_len or image_len != self.grid[0] * self.grid[1] or not chunks \
                or q.shape[0] % len(chunks):
            return  # not the joint call (SD3.5's image-only second attention), or an unexpected layout
        per = q.shape[0] // len(chunks)
        scale = q.shape[-1] ** -0.5
        self.layers_seen += 1
        self.blocks_seen.append(block)
        for j, cond_index in enumerate(chunks):
            concept = self.cond_to_concept.get(cond_index)
            if concept is None:
                continue
            rows = slice(j * per, (j + 1) * per)
            idx = self.token_positions[concept].to(q.device)
            summed = None
            for h in range(q.shape[1]):  # one head at a time: (per, L_img, L) at most
                probs = torch.softmax(q[rows, h, text_len:].float() @ k[rows, h].float().transpose(-1, -2) * scale,
                                      dim=-1)
                part = probs.index_select(-1, idx).sum(-1)
                summed = part if summed is None else summed + part
            self.accumulator.add_summed(concept, summed / q.shape[1])

    def override(self, previous, block, text_len, image_len, chunks):
        """An optimized_attention_override: record (when enabled), then attend as the host (or the override
        that was there) would."""
        def ledits_joint_attention(func, *args, **kwargs):
            if self.enabled and self.accumulator is not None:
                q, k = args[0], args[1]
                heads = kwargs.get("heads", args[3] if len(args) > 3 else None)
                if heads is not None:
                    self.record(q, k, int(heads), bool(kwargs.get("skip_reshape", False)), text_len, image_len,
                                chunks, block)
            if previous is not None:
                return previous(func, *args, **kwargs)
            return func(*args, **kwargs)
        return ledits_joint_attention

    def block_wrapper(self, block, previous=None):
        """A patches_replace["dit"] ("double_block", block) fn(args, extra): runs the block (or the replacement
        that was there) with our attention override in a copy of its transformer_options."""
        def ledits_double_block(args, extra):
            options = dict(args.get("transformer_options") or {})
            text_len, image_len = int(args["txt"].shape[1]), int(args["img"].shape[1])
            options[OVERRIDE] = self.override(options.get(OVERRIDE), block, text_len, image_len,
                                              list(options.get("cond_or_uncond") or []))
            args = dict(args, transformer_options=options)
            if previous is not None:
                return previous(args, extra)
            original = extra["original_block"]
            return original(args)
        return ledits_double_block


def joint_patched_clone(model, capture: JointAttentionCapture, blocks: list[int]):
    """model.clone() with the capture wrapper on each chosen double block, chained onto any dit replacement."""
    m = model.clone()
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for number in blocks:
        m.set_model_patch_replace(capture.block_wrapper(number, existing.get(("double_block", number))),
                                  "dit", "double_block", number)
    return m
