"""Sigma schedules: which part of a schedule LEDITS++ inverts and edits over."""

from __future__ import annotations

import math

import torch


def total_schedule_steps(steps: int, skip: float) -> int:
    """Length T of the full schedule so that dropping its noisiest `skip` fraction leaves `steps`.

    T = round(steps / (1 - skip)); skip = 0 gives T = steps.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0.0 <= skip < 1.0:
        raise ValueError(f"skip must be in [0, 1), got {skip}: it is the fraction of the noisiest steps dropped")
    return max(steps, int(round(steps / (1.0 - skip))))


def kept_sigmas(full_sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """The last `steps` + 1 sigmas of a descending schedule (T + 1,) ending at 0 -> (steps + 1,) float64."""
    full = torch.as_tensor(full_sigmas).detach().to("cpu", torch.float64).flatten()
    if full.numel() < steps + 1:
        raise ValueError(f"schedule has {full.numel()} sigmas, need at least {steps + 1} for {steps} steps")
    kept = full[-(steps + 1):].clone()
    if not bool(torch.all(kept[:-1] > kept[1:])):
        raise ValueError("sigma schedule must be strictly decreasing")
    return kept


def karras_sigmas(n: int, sigma_min: float = 0.0292, sigma_max: float = 14.6146, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) schedule of n sigmas plus a final 0 -> (n + 1,) float64 (for tests and scripts)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def vp_sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """k-diffusion sigmas of a VP model: sigma_t = sqrt((1 - abar_t) / abar_t), shape (1000,)."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - a) / a).sqrt()


def log_sigma_gap(sigma: float, sigma_next: float) -> float:
    """h = log(sigma / sigma_next), the step length in log-SNR/2 units (inf when sigma_next = 0)."""
    return math.inf if sigma_next == 0 else math.log(sigma / sigma_next)
