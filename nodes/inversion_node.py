"""LEDITS Inversion: invert a photo's latent once; edits then reuse it."""

from __future__ import annotations

import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from .. import ledits_core as core
from .guider import LeditsGuider, inversion_sampler
from .host_model import conditioning_to_cpu, empty_conditioning, model_kind, noise_parametrization
from .objects import LeditsInversion
from .types import CATEGORY, LeditsInversionType


def invert_latent(model, clip, latent: dict, steps: int, skip: float, sampler: str, scheduler: str, seed: int,
                  source=None, source_scale: float = 3.5) -> LeditsInversion:
    """Run edit-friendly inversion of latent["samples"] through the host and return the LEDITS_INVERSION."""
    kind = model_kind(model)
    samples = latent["samples"]
    if samples.ndim != 4:
        raise ValueError(f"LEDITS Inversion needs an image latent (B, C, H, W), got shape {tuple(samples.shape)}")
    total = core.total_schedule_steps(steps, skip)
    full = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, total)
    sigmas = core.kept_sigmas(full, steps)
    uncond = conditioning_to_cpu(empty_conditioning(clip, kind))
    pending = LeditsInversion(core.InversionRecord(sigmas, samples, torch.empty((steps, 0))), kind, tuple(samples.shape),
                              uncond, conditioning_to_cpu(source) if source is not None else None,
                              float(source_scale), scheduler, float(skip))
    guider = LeditsGuider(model).setup(pending, [])
    sink: list = []
    settings = {"family": kind.family, "scheduler": scheduler, "skip": float(skip), "steps": int(steps)}
    # The photo in model space, handed to the inversion directly: the host starts a flow model's sampling at
    # (1 - sigma) x0 + sigma noise, which at sigma = 1 keeps nothing of the photo.
    x0 = model.get_model_object("latent_format").process_in(samples)
    parametrization = noise_parametrization(model)
    guider.sample(torch.zeros_like(samples), samples,
                  inversion_sampler(sink, sigmas, sampler, seed, settings, x0, parametrization),
                  sigmas.float(), callback=latent_preview.prepare_callback(model, steps),
                  disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    record = sink[0].to("cpu")
    return LeditsInversion(record, kind, tuple(samples.shape), pending.uncond, pending.source, pending.source_scale,
                           scheduler, float(skip), photo=samples.detach().cpu())


class LeditsInversionNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeditsInversion",
            display_name="LEDITS Inversion",
            category=CATEGORY,
            description="Turns a photo's latent into the noise path that regenerates it exactly (edit-friendly "
                        "inversion). Run it once per photo; every edit of that photo reuses it.",
            inputs=[
                io.Model.Input("model", tooltip="The checkpoint's MODEL (SD1.x, SD2.x, SDXL, SD3.x or Flux.1)."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP, used to build the empty (unconditional) prompt."),
                io.Latent.Input("latent", tooltip="The photo, encoded with VAE Encode. A batch is fine."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="Denoising steps the edit will take. More steps: finer edits, slower. "
                                     "SD3.x / Flux.1-dev: 28 to start with, Flux.1-schnell: 8."),
                io.Float.Input("skip", default=0.15, min=0.0, max=0.95, step=0.01,
                               tooltip="Fraction of the noisiest steps to leave out. Higher keeps more of the "
                                       "original layout; lower allows bigger changes."),
                io.Combo.Input("sampler", options=list(core.STEPPERS), default="dpmpp_2m_sde",
                               tooltip="dpmpp_2m_sde: SDE-DPM-Solver++ 2M (the LEDITS++ default). ddpm: first "
                                       "order, needs more steps."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="karras",
                               tooltip="How the noise levels are spaced (the host's schedulers). karras for "
                                       "SD1.x/SD2.x/SDXL; simple for SD3.x and Flux.1, as ComfyUI's own flow "
                                       "workflows."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the per-step noise (different seeds give slightly different edits). "
                                     "'control after generate' starts at fixed, so the photo is inverted once and "
                                     "every edit reuses it; randomize re-inverts on every run."),
                io.Conditioning.Input("source", optional=True,
                                      tooltip="Optional: a prompt describing the photo. Guides the inversion "
                                              "towards it; leave empty for the plain unconditional inversion."),
                io.Float.Input("source_scale", default=3.5, min=0.0, max=20.0, step=0.1,
                               tooltip="Guidance scale towards the source prompt (used only when 'source' is "
                                       "connected)."),
            ],
            outputs=[LeditsInversionType.Output(display_name="inversion",
                                                tooltip="The inverted photo: connect it to LEDITS Sampler or LEDITS Guider.")],
        )

    @classmethod
    def execute(cls, model, clip, latent, steps, skip, sampler, scheduler, seed, source=None,
                source_scale=3.5) -> io.NodeOutput:
        return io.NodeOutput(invert_latent(model, clip, latent, steps, skip, sampler, scheduler, seed, source,
                                           source_scale))
