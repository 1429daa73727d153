"""LEDITS++ guidance inside the host's sampling machinery: a CFGGuider and two KSAMPLER functions."""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.samplers
import torch

from .. import ledits_core as core
from .capture import AttentionCapture, patched_clone
from .host_model import FLOW_FAMILIES, quarter_resolution_blocks, transformer_blocks, with_size_conditioning
from .joint_capture import JointAttentionCapture, double_blocks, joint_patched_clone, patch_size
from .objects import LeditsConcept, LeditsInversion, LeditsPromptEdit
from .prompt_control import PromptControl

log = logging.getLogger(__name__)


def _interrupt():
    comfy.model_management.throw_exception_if_processing_interrupted()


def concept_specs(concepts: list[LeditsConcept], steps: int, latent_shape) -> list[core.ConceptSpec]:
    """Core concept specs: warmup/cooldown fractions -> step indices, user MASK -> (B or 1, 1, h, w)."""
    specs = []
    for c in concepts:
        first, end = c.step_window(steps)
        specs.append(core.ConceptSpec(scale=c.scale, threshold=c.threshold, reverse=c.reverse, warmup=first,
                                      cooldown=end, user_mask=latent_mask(c.mask, latent_shape), label=c.label))
    return specs


def latent_mask(mask: torch.Tensor | None, latent_shape) -> torch.Tensor | None:
    """A host MASK (H, W) or (B, H, W) at any size -> (B or 1, 1, h, w) at the latent size (bilinear)."""
    if mask is None:
        return None
    m = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    batch = int(latent_shape[0])
    if m.shape[0] not in (1, batch):
        raise ValueError(f"the concept's mask has {m.shape[0]} frames but the image batch has {batch}: "
                         "use one mask, or one per image")
    return torch.nn.functional.interpolate(m, size=tuple(latent_shape[-2:]), mode="bilinear", align_corners=False)


class LeditsGuider(comfy.samplers.CFGGuider):
    """One batched calc_cond_batch per step, then LEDITS++ guidance: [uncond, (source), active concepts], or
    with a prompt edit [uncond, active concepts, target, source at the inversion's state]."""

    def setup(self, inversion: LeditsInversion, concepts: list[LeditsConcept], mask_mode: str = "intersect",
              capture: AttentionCapture | None = None, prompt: PromptControl | None = None,
              photo_path: core.p2p.SourceTrajectory | None = None):
        """Set the conds (uncond, source, one per concept, target) and the guidance; concepts may be empty.

        photo_path: the photo's own states (the inversion's), to keep the photo outside where the edits acted
        (keep_photo_outside_masks); None: the edit acts as LEDITS++ does."""
        self.inversion = inversion
        self.prompt = prompt
        self.photo_path = photo_path
        self.blend_index = len(concepts)
        self.source_scale = inversion.source_scale if inversion.source is not None else 0.0
        shape, kind = inversion.latent_shape, inversion.kind
        self.guidance = core.EditGuidance(concept_specs(concepts, inversion.steps, shape), mask_mode)
        self.capture = capture
        self.step_listener = None  # optional fn(step, total_steps, {concept: StepMasks}, denoised), e.g. live previews
        conds = {"uncond": with_size_conditioning(inversion.uncond, kind, shape)}
        if inversion.source is not None:
            conds["source"] = with_size_conditioning(inversion.source, kind, shape)
        for i, c in enumerate(concepts):
            conds[f"concept_{i}"] = with_size_conditioning(c.conditioning, kind, shape)
        if prompt is not None:
            conds["target"] = with_size_conditioning(prompt.edit.target_conditioning, kind, shape)
        self.inner_set_conds(conds)
        return self

    @torch.no_grad()
    def sample(self, *args, **kwargs):
        # Gradient-free, whatever the caller's grad mode: the server samples under inference_mode, but a script or
        # another pack calling our nodes in-process would otherwise keep every step's autograd graph alive in the
        # inversion record and the masks (0.3.64 leaves a model's parameters requiring grad).
        self.guidance.reset()
        if self.prompt is not None:
            self.prompt.reset()
        return super().sample(*args, **kwargs)

    def step_index(self, timestep, model_options) -> int:
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:
            sigmas = self.inversion.record.sigmas
        sigmas = sigmas.to(timestep.device, torch.float32)[:-1]
        return int(torch.argmin((sigmas - timestep.flatten()[0].float()).abs()))

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        model_options = model_options or {}
        step = self.step_index(timestep, model_options)
        active = self.guidance.active(step)
        with_source = "source" in self.conds and self.prompt is None
        conds = [self.conds["uncond"]] + ([self.conds["source"]] if with_source else [])
        offset = len(conds)
        conds += [self.conds[f"concept_{i}"] for i in active]
        if self.prompt is not None:
            target = len(conds)
            conds += [self.conds["target"], self.conds["source"]]
            self.prompt.begin_step(step, target, target + 1, x)
        use_capture = self.capture is not None and self.guidance.needs_attention and active
        if use_capture:
            self.capture.begin_step({offset + j: c for j, c in enumerate(active)})
            self.capture.enabled = True
        try:
            out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        finally:
            if self.capture is not None:
                self.capture.enabled = False
            if self.prompt is not None:
                self.prompt.enabled = False
        attn = self.capture.end_step() if use_capture else {}
        if use_capture and not attn:
            where = ("joint attention" if self.inversion.kind.family in FLOW_FAMILIES
                     else "cross-attention at 1/4 latent resolution")
            log.warning("[LEDITS++] no %s was seen at step %d; the attention mask falls back to the noise mask",
                        where, step)
        out = self._pre_cfg(conds, out, x, timestep, model_options)
        uncond = out[0]
        if self.inversion.kind.distilled:
            # Guidance-distilled (Flux.1-dev): no CFG; the base is the source prompt's prediction (or the empty
            # prompt's) and each concept's direction is taken from it.
            base = uncond = out[1] if offset == 2 else uncond
        else:
            base = core.source_guidance(uncond, out[1], self.source_scale) if offset == 2 else uncond
        if self.prompt is not None:
            base = core.source_guidance(uncond, out[target], self.prompt.edit.scale)
            self._blend_mask(step, x.shape[-2:])
        preds = {c: out[offset + j] for j, c in enumerate(active)}
        guided = self.guidance(step, base, uncond, preds, attn)
        if self.step_listener is not None:
            self.step_listener(step, self.inversion.steps, self.guidance.masks.get(step, {}), guided)
        return self._post_cfg(conds, guided, base, uncond, x, timestep, model_options)

    def kept_region(self) -> torch.Tensor | None:
        """With keep_photo_outside_masks: where the edit may differ from the photo, (B or 1, 1, H, W) bool: where a
        concept has acted so far, and the prompt edit's local-blend mask (a prompt edit without local blend acts
        everywhere); None without the option."""
        if self.photo_path is None:
            return None
        region = self.guidance.acted
        if self.prompt is not None:
            prompt = (self.prompt.mask > 0.5).cpu() if self.prompt.blend is not None and self.prompt.mask is not None \
                else torch.ones((1, 1, *self.inversion.latent_shape[-2:]), dtype=torch.bool)
            region = prompt if region is None else region | prompt
        return region

    def post_step(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """After step i: the prompt edit's local blend, then (keep_photo_outside_masks) the photo's own state
        x_(i+1) outside where the edits acted."""
        if self.prompt is not None and self.prompt.blend is not None:
            x = self.prompt.post_step(i, x)
        if self.photo_path is not None:
            x = core.keep_photo_outside(x, self.photo_path.state(i + 1), self.kept_region())
        return x

    def _blend_mask(self, step: int, latent_hw) -> None:
        """Close the prompt edit's step; record its local-blend mask beside the concepts' masks."""
        mask = self.prompt.end_step(latent_hw)
        if self.prompt.blend is not None and mask is None:
            log.warning("[LEDITS++] no cross-attention at 1/4 latent resolution was seen at step %d; "
                        "the local blend does not act", step)
        if mask is not None and self.guidance.record_masks:
            binary = (mask > 0.5).cpu()
            self.guidance.masks.setdefault(step, {})[self.blend_index] = core.StepMasks(binary, None, binary)

    def _pre_cfg(self, conds, out, x, timestep, model_options):
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": conds, "conds_out": out, "cond_scale": 1.0, "timestep": timestep, "input": x,
                      "sigma": timestep, "model": self.inner_model, "model_options": model_options})
        return out

    def _post_cfg(self, conds, guided, base, uncond, x, timestep, model_options):
        for fn in model_options.get("sampler_post_cfg_function", []):
            guided = fn({"denoised": guided, "cond": conds[1] if len(conds) > 1 else None, "uncond": conds[0],
                         "model": self.inner_model, "uncond_denoised": uncond, "cond_denoised": base,
                         "cond_scale": 1.0, "sigma": timestep, "model_options": model_options, "input": x})
        return guided


def _k_callback(callback, sigmas):
    """Adapt core progress (i, x, denoised) to the k-diffusion callback dict the host's KSAMPLER expects."""
    if callback is None:
        return None
    return lambda i, x, d: callback({"i": i, "x": x, "denoised": d, "sigma": sigmas[i], "sigma_hat": sigmas[i]})


def _denoiser(model, extra_args, batch, like):
    s_in = like.new_ones([batch])
    return lambda x, sigma, i: model(x, sigma * s_in, **extra_args)


def inversion_sampler(sink: list, sigmas: torch.Tensor, sampler: str, seed: int, settings: dict,
                      x0: torch.Tensor, parametrization: str = "ve"):
    """A KSAMPLER that inverts x0 (the photo in model space; the host's own start state is not used: for a
    flow model at sigma = 1 it holds nothing of the photo) and returns it unchanged."""
    def ledits_invert(model, x, sigmas_in, extra_args=None, callback=None, disable=None):
        photo = x0.to(x.device, x.dtype)
        record = core.invert(photo, sigmas, _denoiser(model, extra_args or {}, x.shape[0], x), sampler, seed,
                             callback=_k_callback(callback, sigmas), interrupt=_interrupt, settings=settings,
                             parametrization=parametrization)
        sink.append(record)
        return photo
    return comfy.samplers.KSAMPLER(ledits_invert)


def edit_sampler(inversion: LeditsInversion, post_step=None):
    """A KSAMPLER that replays the inversion's noise maps from its start state; the incoming x is ignored.

    post_step(i, x) -> x: a prompt edit's local blend."""
    def ledits_edit(model, x, sigmas_in, extra_args=None, callback=None, disable=None):
        record = inversion.record
        if sigmas_in.shape[-1] != record.sigmas.shape[-1] or not torch.allclose(
                sigmas_in.float().cpu(), record.sigmas.float(), rtol=1e-5, atol=1e-6):
            raise ValueError("the SIGMAS given to the sampler are not the inversion's: connect the SIGMAS output "
                             "of LEDITS Guider to SamplerCustomAdvanced")
        if tuple(x.shape) != tuple(record.x_start.shape):
            raise ValueError(f"the inversion was made for a latent of shape {tuple(record.x_start.shape)}, the "
                             f"sampler got {tuple(x.shape)}: use the same latent, or re-run LEDITS Inversion")
        record = record.to(x.device, x.dtype)
        return core.sample(record, _denoiser(model, extra_args or {}, x.shape[0], x),
                           callback=_k_callback(callback, record.sigmas), interrupt=_interrupt, post_step=post_step)
    return comfy.samplers.KSAMPLER(ledits_edit)


def edit_guider(model, inversion: LeditsInversion, concepts: list[LeditsConcept], mask_mode: str,
                prompt_edit: LeditsPromptEdit | None = None, keep_photo: bool = False) -> LeditsGuider:
    """A guider on a clone of model, with attention capture on the 1/4-resolution blocks when M1 is used,
    and the prompt edit's attention control when there is one (check_prompt_edit first); keep_photo: the photo's
    own state outside where the edits acted, after every step (check_keep_photo first)."""
    capture = None
    if concepts and mask_mode in ("intersect", "attention") and inversion.kind.family in FLOW_FAMILIES:
        capture = JointAttentionCapture({i: list(c.token_positions) for i, c in enumerate(concepts)},
                                        inversion.latent_shape[-2:], patch_size(model))
        model = joint_patched_clone(model, capture, double_blocks(model))
    elif concepts and mask_mode in ("intersect", "attention"):
        capture = AttentionCapture({i: list(c.token_positions) for i, c in enumerate(concepts)},
                                   {i: c.context_len for i, c in enumerate(concepts)})
        blocks = quarter_resolution_blocks(model)
        if not blocks:
            log.warning("[LEDITS++] this UNet has no 1/4-resolution level; masks use the noise mask only")
        model = patched_clone(model, capture, blocks)
    else:
        model = model.clone()
    control = photo_path = None
    if prompt_edit is not None or keep_photo:
        x0 = model.get_model_object("latent_format").process_in(inversion.photo.float())
    if prompt_edit is not None:
        control = PromptControl(prompt_edit, inversion, x0)
        control.install(model, transformer_blocks(model))
    if keep_photo:
        photo_path = control.trajectory if control is not None else core.p2p.SourceTrajectory(
            inversion.record.states, x0.cpu())
    return LeditsGuider(model).setup(inversion, concepts, mask_mode, capture, control, photo_path)


def check_keep_photo(inversion: LeditsInversion, concepts, mask_mode: str, prompt_edit) -> None:
    """Raise before any work if keep_photo_outside_masks cannot act; warn where it keeps nothing."""
    if inversion.photo is None or inversion.record.states is None:
        raise ValueError("keep_photo_outside_masks needs the photo's own path, which this inversion did not record "
                         "(it was made by an older version of the pack): re-run LEDITS Inversion")
    if mask_mode == "none" and any(c.mask is None for c in concepts or ()):
        log.warning("[LEDITS++] keep_photo_outside_masks: with mask_mode none, a concept without its own mask acts "
                    "everywhere, so nothing of the photo is kept; use intersect, or give the concept a mask")
    if prompt_edit is not None and not prompt_edit.blend_words:
        log.warning("[LEDITS++] keep_photo_outside_masks: the prompt edit has no local blend, so it acts everywhere "
                    "and nothing of the photo is kept; give it blend_words to keep the photo outside them")


def blend_step(guider: LeditsGuider):
    """The guider's post-step function (a prompt edit's local blend, keep_photo_outside_masks), or None."""
    prompt = getattr(guider, "prompt", None)
    if getattr(guider, "photo_path", None) is not None or (prompt is not None and prompt.blend is not None):
        return guider.post_step
    return None
