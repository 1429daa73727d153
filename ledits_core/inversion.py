"""Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024) as used by LEDITS++."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .steppers import StepHistory, apply_noise, check_parametrization, get_stepper

Denoiser = Callable[[torch.Tensor, float, int], torch.Tensor]
"""D(x, sigma, step_index) -> denoised, shapes (B, C, H, W); k-diffusion convention x = x0 + sigma * eps."""

FORMAT_VERSION = 1


@dataclass
class InversionRecord:
    """Everything sampling needs to reproduce x0: x_next = step_mean + c_i z_i over the kept sigmas.

    sigmas: (N + 1,) float64, descending, last usually 0.  x_start: (B, C, H, W) state at sigmas[0].
    noise_maps: (N, B, C, H, W); slot i holds z_i, or the residual x_{i+1} - mean_i where c_i = 0
    (the step into sigma = 0), which makes the reconstruction exact.  settings: JSON-able facts.
    states: (N, B, C, H, W) or None; slot i holds the state x_i the inversion evaluated (x_0 = x_start),
    bitwise what a replay without edits walks through (Prompt-to-Prompt's source row is evaluated there).
    """

    sigmas: torch.Tensor
    x_start: torch.Tensor
    noise_maps: torch.Tensor
    sampler: str = "dpmpp_2m_sde"
    settings: dict = field(default_factory=dict)
    states: torch.Tensor | None = None
    parametrization: str = "ve"
    """How a state holds the photo: "ve" x = x0 + sigma eps, "flow" x = (1 - sigma) x0 + sigma eps."""

    @property
    def steps(self) -> int:
        return int(self.noise_maps.shape[0])

    @property
    def latent_shape(self) -> tuple:
        return tuple(self.x_start.shape)

    def to_state(self) -> tuple[dict, dict]:
        """(tensors, settings): a dict of CPU tensors and a JSON-able dict; from_state inverts it."""
        tensors = {"sigmas": self.sigmas.cpu(), "x_start": self.x_start.cpu(), "noise_maps": self.noise_maps.cpu()}
        if self.states is not None:
            tensors["states"] = self.states.cpu()
        settings = dict(self.settings, sampler=self.sampler, format_version=FORMAT_VERSION,
                        parametrization=self.parametrization)
        return tensors, settings

    @classmethod
    def from_state(cls, tensors: dict, settings: dict) -> "InversionRecord":
        settings = dict(settings)
        version = settings.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"inversion format {version} is not supported (expected {FORMAT_VERSION}); re-run the inversion")
        sampler = settings.pop("sampler")
        parametrization = check_parametrization(settings.pop("parametrization", "ve"))  # records before it: ve
        return cls(tensors["sigmas"], tensors["x_start"], tensors["noise_maps"], sampler, settings,
                   tensors.get("states"), parametrization)

    def to(self, device=None, dtype=None) -> "InversionRecord":
        """A copy with x_start, noise maps and states moved; sigmas stay float64 on the CPU."""
        states = None if self.states is None else self.states.to(device, dtype)
        return InversionRecord(self.sigmas, self.x_start.to(device, dtype), self.noise_maps.to(device, dtype),
                               self.sampler, dict(self.settings), states, self.parametrization)


def step_noises(shape, steps: int, seed: int) -> torch.Tensor:
    """Independent standard normal maps n_i, one per kept step: (steps, *shape) float32, CPU generator."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((steps, *shape), generator=gen, dtype=torch.float32)


@torch.no_grad()  # gradient-free: a record never holds an autograd graph, whatever the caller's grad mode
def invert(x0: torch.Tensor, sigmas: torch.Tensor, denoise: Denoiser, sampler: str = "dpmpp_2m_sde",
           seed: int = 0, callback=None, interrupt=None, settings: dict | None = None,
           parametrization: str = "ve") -> InversionRecord:
    """Edit-friendly inversion of x0 (B, C, H, W) over sigmas (N + 1,).

    x_i = alpha_i x0 + sigma_i n_i (independent n_i; alpha = 1 for "ve", 1 - sigma for "flow"), x_N = x0;
    walking i = 0..N-1: mean_i = step(x_i, D(x_i, sigma_i)); z_i = (x_{i+1} - mean_i) / c_i; then
    x_{i+1} := mean_i + c_i z_i. callback(i, x_next, denoised) reports progress; interrupt() may raise to stop.
    """
    stepper = get_stepper(sampler, parametrization)
    sig = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).tolist()]
    steps = len(sig) - 1
    if steps < 1:
        raise ValueError("need at least two sigmas (one step) to invert")
    noises = step_noises(x0.shape, steps, seed).to(x0.device, x0.dtype)
    flow = parametrization == "flow"

    def noisy(i):  # the photo at sigma_i with its own independent noise
        return (1.0 - sig[i]) * x0 + sig[i] * noises[i] if flow else x0 + sig[i] * noises[i]

    x = noisy(0)
    x_start = x.clone()
    maps = torch.empty((steps, *x0.shape), dtype=x0.dtype, device=x0.device)
    states = torch.empty_like(maps)
    history = StepHistory()
    for i in range(steps):
        if interrupt is not None:
            interrupt()
        states[i] = x
        denoised = denoise(x, sig[i], i)
        mean, c, history = stepper(x, denoised, sig[i], sig[i + 1], history)
        target = noisy(i + 1) if i + 1 < steps else x0
        maps[i] = (target - mean) / c if c > 0 else target - mean
        x = apply_noise(mean, c, maps[i])
        if callback is not None:
            callback(i, x, denoised)
    return InversionRecord(torch.tensor(sig, dtype=torch.float64), x_start, maps, sampler,
                           dict(settings or {}, seed=int(seed)), states, parametrization)


def sample(record: InversionRecord, denoise: Denoiser, callback=None, interrupt=None,
           post_step=None) -> torch.Tensor:
    """Replay the inversion's steps with the stored noise maps and a (guided) denoiser -> x0 (B, C, H, W).

    With the inversion's own denoiser this returns x0 up to rounding (max abs error ~1e-7 in float32).
    post_step(i, x_next) -> x_next may change each new state (Prompt-to-Prompt's local blend).
    """
    stepper = get_stepper(record.sampler, record.parametrization)
    sig = [float(s) for s in record.sigmas.tolist()]
    x = record.x_start.clone()
    history = StepHistory()
    for i in range(record.steps):
        if interrupt is not None:
            interrupt()
        denoised = denoise(x, sig[i], i)
        mean, c, history = stepper(x, denoised, sig[i], sig[i + 1], history)
        x = apply_noise(mean, c, record.noise_maps[i])
        if post_step is not None:
            x = post_step(i, x)
        if callback is not None:
            callback(i, x, denoised)
    return x
