"""One reverse-diffusion step split into a deterministic mean and a noise coefficient.

Every stepper maps (x, denoised, sigma, sigma_next, history) to (mean, noise_scale, history) so that
x_next = mean + noise_scale * z. Edit-friendly inversion solves this for z; sampling replays it.
k-diffusion convention throughout: x = x0 + sigma * eps, denoised = D(x, sigma).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .schedules import log_sigma_gap


@dataclass
class StepHistory:
    """What a multistep solver remembers from the previous step."""

    prev_denoised: torch.Tensor | None = None
    prev_h: float | None = None


def dpmpp_2m_sde_step(x, denoised, sigma: float, sigma_next: float, history: StepHistory):
    """SDE-DPM-Solver++(2M), midpoint, eta = 1 (Lu et al. 2022); tensors (B, C, H, W).

    mean = e^{-2h} x + (1 - e^{-2h}) D + 0.5 (1 - e^{-2h}) (D - D_prev) / r,  r = h_prev / h;
    noise_scale = sigma_next sqrt(1 - e^{-2h}); first order on the first step and into sigma_next = 0.
    """
    if sigma_next == 0:
        return denoised, 0.0, StepHistory(denoised, None)
    h = log_sigma_gap(sigma, sigma_next)
    one_minus = -math.expm1(-2.0 * h)
    mean = math.exp(-2.0 * h) * x + one_minus * denoised
    if history.prev_denoised is not None and history.prev_h is not None:
        r = history.prev_h / h
        mean = mean + (0.5 * one_minus / r) * (denoised - history.prev_denoised)
    return mean, sigma_next * math.sqrt(one_minus), StepHistory(denoised, h)


def ddpm_step(x, denoised, sigma: float, sigma_next: float, history: StepHistory):
    """DDPM posterior step = ancestral Euler with eta = 1 (Ho et al. 2020); tensors (B, C, H, W).

    mean = D + (sigma_next / sigma)^2 (x - D);  noise_scale = sigma_next sqrt(1 - (sigma_next / sigma)^2).
    """
    ratio2 = (sigma_next / sigma) ** 2
    mean = denoised + ratio2 * (x - denoised)
    return mean, sigma_next * math.sqrt(max(0.0, 1.0 - ratio2)), history


STEPPERS = {"dpmpp_2m_sde": dpmpp_2m_sde_step, "ddpm": ddpm_step}


def get_stepper(name: str):
    """The step function for a sampler name; raises with the supported names otherwise."""
    try:
        return STEPPERS[name]
    except KeyError:
        raise ValueError(f"unknown LEDITS++ sampler {name!r}; supported: {', '.join(STEPPERS)}") from None


def apply_noise(mean: torch.Tensor, noise_scale: float, noise_map: torch.Tensor) -> torch.Tensor:
    """x_next = mean + c z when c > 0; a zero-noise step stores the residual itself: x_next = mean + r."""
    noise_map = noise_map.to(mean.dtype)
    return mean + noise_scale * noise_map if noise_scale > 0 else mean + noise_map
