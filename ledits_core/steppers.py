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


def flow_alpha(sigma: float) -> float:
    """The signal coefficient of a flow-matching state x = (1 - sigma) x0 + sigma eps."""
    return 1.0 - sigma


def flow_dpmpp_2m_sde_step(x, denoised, sigma: float, sigma_next: float, history: StepHistory):
    """SDE-DPM-Solver++(2M), midpoint, eta = 1, for x = alpha x0 + sigma eps with alpha = 1 - sigma.

    lambda = log(alpha / sigma), h = lambda_next - lambda:
    mean = (sigma_next / sigma) e^{-h} x + alpha_next (1 - e^{-2h}) D + 0.5 alpha_next (1 - e^{-2h}) (D - D_prev) / r;
    noise_scale = sigma_next sqrt(1 - e^{-2h}). At sigma = 1 (alpha = 0, lambda = -inf) the limit is taken:
    mean = alpha_next D, noise_scale = sigma_next, and the next step is first order (r = inf).
    First order on the first step and into sigma_next = 0 (mean = D, noise_scale = 0).
    """
    if sigma_next == 0:
        return denoised, 0.0, StepHistory(denoised, None)
    alpha, alpha_next = flow_alpha(sigma), flow_alpha(sigma_next)
    if alpha <= 0:
        return alpha_next * denoised, sigma_next, StepHistory(denoised, math.inf)
    h = math.log(alpha_next / sigma_next) - math.log(alpha / sigma)
    one_minus = -math.expm1(-2.0 * h)
    mean = (sigma_next / sigma) * math.exp(-h) * x + (alpha_next * one_minus) * denoised
    if history.prev_denoised is not None and history.prev_h is not None and math.isfinite(history.prev_h):
        r = history.prev_h / h
        mean = mean + (0.5 * alpha_next * one_minus / r) * (denoised - history.prev_denoised)
    return mean, sigma_next * math.sqrt(one_minus), StepHistory(denoised, h)


def flow_ddpm_step(x, denoised, sigma: float, sigma_next: float, history: StepHistory):
    """DDPM posterior step (eta = 1) for x = alpha x0 + sigma eps with alpha = 1 - sigma.

    a = alpha / alpha_next, v = sigma^2 - a^2 sigma_next^2 (the forward step's variance):
    mean = (a sigma_next^2 / sigma^2) x + (alpha_next v / sigma^2) D;  noise_scale = sqrt(v sigma_next^2 / sigma^2).
    """
    alpha, alpha_next = flow_alpha(sigma), flow_alpha(sigma_next)
    a = alpha / alpha_next
    v = max(0.0, sigma ** 2 - (a * sigma_next) ** 2)
    mean = (a * sigma_next ** 2 / sigma ** 2) * x + (alpha_next * v / sigma ** 2) * denoised
    return mean, math.sqrt(v * sigma_next ** 2) / sigma, history


STEPPERS = {"dpmpp_2m_sde": dpmpp_2m_sde_step, "ddpm": ddpm_step}
FLOW_STEPPERS = {"dpmpp_2m_sde": flow_dpmpp_2m_sde_step, "ddpm": flow_ddpm_step}
PARAMETRIZATIONS = ("ve", "flow")
"""ve: x = x0 + sigma eps (k-diffusion form of every eps / v model); flow: x = (1 - sigma) x0 + sigma eps."""


def check_parametrization(parametrization: str) -> str:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"unknown noise parametrization {parametrization!r}; supported: {', '.join(PARAMETRIZATIONS)}")
    return parametrization


def signal_scale(sigma: float, parametrization: str = "ve") -> float:
    """alpha(sigma): how much of x0 a state at sigma holds (1 for ve, 1 - sigma for flow)."""
    return flow_alpha(sigma) if check_parametrization(parametrization) == "flow" else 1.0


def get_stepper(name: str, parametrization: str = "ve"):
    """The step function for a sampler name and noise parametrization; raises with the supported names otherwise."""
    table = FLOW_STEPPERS if check_parametrization(parametrization) == "flow" else STEPPERS
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown LEDITS++ sampler {name!r}; supported: {', '.join(STEPPERS)}") from None


def apply_noise(mean: torch.Tensor, noise_scale: float, noise_map: torch.Tensor) -> torch.Tensor:
    """x_next = mean + c z when c > 0; a zero-noise step stores the residual itself: x_next = mean + r."""
    noise_map = noise_map.to(mean.dtype)
    return mean + noise_scale * noise_map if noise_scale > 0 else mean + noise_map
