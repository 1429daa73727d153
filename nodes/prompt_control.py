"""Prompt-to-Prompt inside the host: attn1/attn2 replace patches and a UNet wrapper on a clone of the MODEL.

Per step the guider batches [uncond, active concepts, target, source] in one calc_cond_batch call. The UNet
wrapper puts the inversion's own state x_i into the source rows (the source needs no stepping); the
attention patches compute explicit probabilities for the source and target rows of the controlled layers
only, and add (M^ - M*) V to the target rows' output, so whatever the previous patch in the chain
(another pack's, the M1 capture, the host's own attention) computed is kept.
"""

from __future__ import annotations

import torch

from ..ledits_core import p2p
from .objects import LeditsInversion, LeditsPromptEdit


def default_attention(q, k, v, extra_options):
    from comfy.ldm.modules.attention import optimized_attention
    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                               transformer_options=extra_options)


def install_chained(model, kind: str, blocks, make_patch) -> None:
    """On `model` (a clone we own): make_patch(previous) at each (name, number) for attn1/attn2 `kind`,
    chained onto whatever replace patch was there, also on per-transformer keys (name, number, index)."""
    existing = dict(model.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {}))
    for name, number in blocks:
        model.set_model_patch_replace(make_patch(existing.get((name, number))), kind, name, number)
        for key, fn in existing.items():
            if len(key) == 3 and key[:2] == (name, number):
                model.set_model_patch_replace(make_patch(fn), kind, name, number, key[2])


def grid(extra_options) -> tuple[tuple[int, int], int] | None:
    """((h, w) of this layer's query grid, its downsampling factor from the latent: 1, 2, 4, ...) or None."""
    shape, original = extra_options.get("activations_shape"), extra_options.get("original_shape")
    if shape is None or original is None:
        return None
    h, w = int(shape[-2]), int(shape[-1])
    factor = 1
    while -(-int(original[-2]) // (factor * 2)) >= h and factor < 64:
        factor *= 2
    return (h, w), factor


class PromptControl:
    """The per-run state of one prompt edit: step, which conds are the target and source rows, local blend."""

    def __init__(self, edit: LeditsPromptEdit, inversion: LeditsInversion, x0: torch.Tensor):
        steps = inversion.steps
        self.edit = edit
        self.cross_steps = p2p.steps_before(edit.cross_replace, steps)
        self.self_steps = p2p.steps_before(edit.self_replace, steps)
        self.trajectory = p2p.SourceTrajectory(inversion.record.states, x0.cpu())
        self.blend = (p2p.LocalBlend(edit.blend_source, edit.blend_target, edit.blend_threshold)
                      if edit.blend_words else None)
        self.step = 0
        self.target_index = self.source_index = None
        self.source_state = None
        self.enabled = False
        self.mask: torch.Tensor | None = None
        self.steered = 0
        self.observer = None  # optional fn(kind, step, extra_options, source_probs, target_probs, edited) (tests)

    def reset(self) -> None:
        """Forget the local blend of a previous run (a GUIDER may be sampled more than once)."""
        if self.blend is not None:
            self.blend = p2p.LocalBlend(self.edit.blend_source, self.edit.blend_target, self.edit.blend_threshold)
        self.mask = None

    def begin_step(self, step: int, target_index: int, source_index: int, like: torch.Tensor) -> None:
        self.step, self.target_index, self.source_index = step, target_index, source_index
        self.source_state = self.trajectory.state(step).to(like.device, like.dtype)
        self.steered = 0
        self.enabled = True

    def end_step(self, latent_hw) -> torch.Tensor | None:
        """The local-blend mask after this step's attention, (B, 1, H, W) in {0, 1}; None without local blend."""
        self.enabled = False
        if self.blend is None:
            return None
        self.blend.end_step()
        self.mask = self.blend.mask(latent_hw)
        return self.mask

    def post_step(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Local blend after step i: x_src(i+1) outside the mask, the edit inside."""
        if self.mask is None:
            return x
        return p2p.blend(x, self.trajectory.state(i + 1).to(x.device, x.dtype), self.mask.to(x.device))

    def rows(self, batch: int, extra_options) -> tuple[slice, slice] | None:
        """(target rows, source rows) of this layer's batch, None when the target is not in it."""
        chunks = list(extra_options.get("cond_or_uncond") or [])
        if self.target_index not in chunks:
            return None
        if self.source_index not in chunks:
            raise RuntimeError("LEDITS++ prompt edit: the host split the source and target rows over two model "
                               "calls (short of memory); use a smaller image or fewer concepts")
        per = batch // len(chunks)
        t, s = chunks.index(self.target_index), chunks.index(self.source_index)
        return slice(t * per, (t + 1) * per), slice(s * per, (s + 1) * per)

    def steer_cross(self, q, k, v, out, extra_options):
        """Cross-attention: M^ from the source's and the target's own probabilities; out[target] += (M^ - M*) V."""
        inject = self.step < self.cross_steps
        where = grid(extra_options)
        blend_here = self.blend is not None and where is not None and where[1] == 4
        if not (inject or blend_here or self.edit.cross.factors is not None):
            return out
        rows = self.rows(q.shape[0], extra_options)
        if rows is None:
            return out
        t, s = rows
        heads = extra_options["n_heads"]
        target = p2p.fold_repeats(p2p.head_probs(q[t], k[t], heads), self.edit.target_len)
        source = None
        if inject or blend_here:
            source = p2p.fold_repeats(p2p.head_probs(q[s], k[s], heads), self.edit.source_len)
        if blend_here:
            self.blend.add("source", source.mean(1), where[0])
            self.blend.add("target", target.mean(1), where[0])
        edited = p2p.edited_cross_attention(source, target, self.edit.cross, inject)
        if self.observer is not None:
            self.observer("cross", self.step, extra_options, source, target, edited)
        if edited is target:
            return out
        return self._add(out, t, p2p.attention_output(edited - target, v[t][:, :self.edit.target_len]))

    def steer_self(self, q, k, v, out, extra_options):
        """Self-attention at the coarse levels for steps < tau_s: the target takes the source's probabilities."""
        where = grid(extra_options)
        if self.step >= self.self_steps or where is None or where[1] < 4:
            return out
        rows = self.rows(q.shape[0], extra_options)
        if rows is None:
            return out
        t, s = rows
        heads = extra_options["n_heads"]
        source, target = p2p.head_probs(q[s], k[s], heads), p2p.head_probs(q[t], k[t], heads)
        if self.observer is not None:
            self.observer("self", self.step, extra_options, source, target, source)
        return self._add(out, t, p2p.attention_output(source - target, v[t]))

    def _add(self, out, rows, delta):
        self.steered += 1
        out = out.clone()
        out[rows] = out[rows] + delta.to(out.dtype)
        return out

    def attn2_patch(self, previous=None):
        def ledits_p2p_attn2(q, k, v, extra_options):
            out = (previous or default_attention)(q, k, v, extra_options)
            return self.steer_cross(q, k, v, out, extra_options) if self.enabled else out
        return ledits_p2p_attn2

    def attn1_patch(self, previous=None):
        def ledits_p2p_attn1(q, k, v, extra_options):
            out = (previous or default_attention)(q, k, v, extra_options)
            return self.steer_self(q, k, v, out, extra_options) if self.enabled else out
        return ledits_p2p_attn1

    def unet_wrapper(self, previous=None):
        """model_function_wrapper: the source rows get the inversion's state x_i instead of the edit's x."""
        def ledits_p2p_unet(apply_model, args):
            chunks = list(args.get("cond_or_uncond") or [])
            if self.enabled and self.source_index in chunks:
                x = args["input"].clone()
                per = x.shape[0] // len(chunks)
                j = chunks.index(self.source_index)
                x[j * per:(j + 1) * per] = self.source_state.to(x.device, x.dtype)
                args = {**args, "input": x}
            if previous is not None:
                return previous(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])
        return ledits_p2p_unet

    def install(self, model, blocks) -> None:
        """Patch `model` (a clone we own): attn2 on every transformer block, attn1 on the coarse ones (level >= 2)
        when self-attention is injected, the UNet wrapper chained onto any other."""
        install_chained(model, "attn2", [(n, i) for n, i, _ in blocks], self.attn2_patch)
        if self.self_steps > 0:
            install_chained(model, "attn1", [(n, i) for n, i, level in blocks if level >= 2], self.attn1_patch)
        model.set_model_unet_function_wrapper(self.unet_wrapper(model.model_options.get("model_function_wrapper")))
