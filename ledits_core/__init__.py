"""LEDITS++ in plain torch: edit-friendly inversion, masked semantic guidance, and the editing sampler.

No host (ComfyUI) imports here: a denoiser is any callable D(x, sigma, step) that predicts x0 from a state
in the k-diffusion convention x = x0 + sigma * eps ("ve") or the flow-matching one x = (1 - sigma) x0 + sigma * eps
("flow").
"""

from . import p2p
from .attention import AttentionAccumulator
from .guidance import (
    ConceptSpec,
    EditGuidance,
    StepMasks,
    concept_guidance,
    keep_photo_outside,
    source_guidance,
)
from .inversion import InversionRecord, invert, sample, step_noises
from .masks import (
    MASK_MODES,
    attention_mask,
    combine_masks,
    gaussian_kernel,
    gaussian_smooth,
    noise_mask,
    quantile_mask,
)
from .schedules import karras_sigmas, kept_sigmas, total_schedule_steps
from .steppers import (
    FLOW_STEPPERS,
    PARAMETRIZATIONS,
    STEPPERS,
    StepHistory,
    apply_noise,
    ddpm_step,
    dpmpp_2m_sde_step,
    flow_ddpm_step,
    flow_dpmpp_2m_sde_step,
    get_stepper,
    signal_scale,
)

__all__ = [
    "AttentionAccumulator", "ConceptSpec", "EditGuidance", "StepMasks", "concept_guidance", "keep_photo_outside",
    "source_guidance",
    "InversionRecord", "invert", "sample", "step_noises", "MASK_MODES", "attention_mask", "combine_masks",
    "gaussian_kernel", "gaussian_smooth", "noise_mask", "quantile_mask", "karras_sigmas", "kept_sigmas",
    "total_schedule_steps", "STEPPERS", "StepHistory", "apply_noise", "ddpm_step", "dpmpp_2m_sde_step",
    "get_stepper", "p2p", "FLOW_STEPPERS", "PARAMETRIZATIONS", "flow_ddpm_step", "flow_dpmpp_2m_sde_step",
    "signal_scale",
]
