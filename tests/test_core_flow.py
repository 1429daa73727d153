"""The core on flow-matching states x = (1 - sigma) x0 + sigma eps: exact reconstruction, finite at sigma = 1,
steppers against their closed forms, the record keeps its parametrization; ve results unchanged."""

import math

import pytest
import torch

from ledits_core import (
    InversionRecord,
    flow_ddpm_step,
    flow_dpmpp_2m_sde_step,
    get_stepper,
    invert,
    sample,
    signal_scale,
)
from ledits_core.steppers import StepHistory


def flow_sigmas(n, shift=3.0, start=1.0):
    """A shifted flow schedule from `start` to 0 (as the host's SD3 'simple' schedule: sigma' = s t / (1 + (s - 1) t))."""
    t = torch.linspace(start, 0.0, n + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


def denoiser(seed=0, channels=16):
    """A fixed nonlinear x0 predictor: a random 1x1 mixing, sigma-dependent, like a model's."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn((channels, channels), generator=gen) / channels ** 0.5
    return lambda x, sigma, i: torch.tanh(torch.einsum("oc,bchw->bohw", w, x)) * (1 - 0.5 * sigma)


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "ddpm"])
@pytest.mark.parametrize("start", [1.0, 0.9, 0.5])  # skip 0 starts at sigma = 1; a skip starts below
@pytest.mark.parametrize("shape", [(2, 16, 12, 20), (1, 16, 8, 8)])
def test_flow_reconstruction_is_exact(sampler, start, shape):
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    sig = flow_sigmas(8, start=start)
    rec = invert(x0, sig, denoiser(), sampler, seed=5, parametrization="flow")
    assert rec.parametrization == "flow"
    assert torch.isfinite(rec.noise_maps).all() and torch.isfinite(rec.x_start).all()
    out = sample(rec, denoiser())
    err = (out - x0).abs().max().item()
    print(f"[flow reconstruction] {sampler} start {start} {shape}: {err:.2e}")
    assert err <= 1e-5


def test_flow_states_hold_the_photo_as_the_model_expects():
    """x_i = (1 - sigma_i) x0 + sigma_i n_i: at sigma = 1 the start state is pure noise."""
    x0 = torch.randn((1, 16, 8, 8))
    rec = invert(x0, flow_sigmas(4), denoiser(), seed=2, parametrization="flow")
    noise0 = torch.randn((4, 1, 16, 8, 8), generator=torch.Generator().manual_seed(2))[0]
    assert torch.allclose(rec.x_start, noise0)
    rec = invert(x0, flow_sigmas(4, start=0.6), denoiser(), seed=2, parametrization="flow")
    s = float(rec.sigmas[0])
    assert torch.allclose(rec.x_start, (1 - s) * x0 + s * noise0, atol=1e-6)


def test_flow_dpmpp_closed_form():
    x, d, d_prev = torch.randn(3, 1, 4, 4, 4).unbind(0)
    s, s_next = 0.8, 0.6
    mean, c, hist = flow_dpmpp_2m_sde_step(x, d, s, s_next, StepHistory(d_prev, 0.3))
    lam = lambda v: math.log((1 - v) / v)  # noqa: E731
    h = lam(s_next) - lam(s)
    r = 0.3 / h
    want = (s_next / s) * math.exp(-h) * x + (1 - s_next) * (1 - math.exp(-2 * h)) * (d + 0.5 / r * (d - d_prev))
    assert torch.allclose(mean, want, atol=1e-6)
    assert c == pytest.approx(s_next * math.sqrt(1 - math.exp(-2 * h)))
    assert hist.prev_h == pytest.approx(h)
    # at sigma = 1: alpha = 0, the limit: mean = alpha_next D, noise sigma_next, next step first order
    mean, c, hist = flow_dpmpp_2m_sde_step(x, d, 1.0, 0.7, StepHistory())
    assert torch.allclose(mean, 0.3 * d) and c == pytest.approx(0.7) and math.isinf(hist.prev_h)
    mean2, _, _ = flow_dpmpp_2m_sde_step(x, d, 0.7, 0.5, hist)
    first, _, _ = flow_dpmpp_2m_sde_step(x, d, 0.7, 0.5, StepHistory())
    assert torch.equal(mean2, first)


def test_flow_ddpm_is_the_posterior():
    """The step's mean and variance are those of q(x_s | x_t, x0 = D) for x = alpha x0 + sigma eps."""
    x, d = torch.randn(2, 1, 4, 4, 4).unbind(0)
    t, s = 0.7, 0.4
    at, as_ = 1 - t, 1 - s
    a = at / as_
    var_ts = t ** 2 - a ** 2 * s ** 2
    mean, c, _ = flow_ddpm_step(x, d, t, s, StepHistory())
    assert torch.allclose(mean, a * s ** 2 / t ** 2 * x + as_ * var_ts / t ** 2 * d, atol=1e-6)
    assert c == pytest.approx(math.sqrt(var_ts * s ** 2 / t ** 2))
    mean, c, _ = flow_ddpm_step(x, d, 1.0, 0.6, StepHistory())  # finite at sigma = 1
    assert torch.allclose(mean, 0.4 * d) and c == pytest.approx(0.6)
    mean, c, _ = flow_ddpm_step(x, d, 0.3, 0.0, StepHistory())  # into sigma = 0: the prediction itself
    assert torch.allclose(mean, d) and c == 0.0


def test_ve_is_unchanged_and_the_default():
    assert get_stepper("ddpm") is get_stepper("ddpm", "ve") is not get_stepper("ddpm", "flow")
    assert signal_scale(0.3) == 1.0 and signal_scale(0.3, "flow") == pytest.approx(0.7)
    with pytest.raises(ValueError, match="parametrization"):
        get_stepper("ddpm", "vp")


def test_record_round_trip_keeps_the_parametrization():
    x0 = torch.randn((1, 16, 4, 4))
    rec = invert(x0, flow_sigmas(3), denoiser(), parametrization="flow")
    tensors, settings = rec.to_state()
    assert InversionRecord.from_state(tensors, settings).parametrization == "flow"
    settings.pop("parametrization")  # a record saved before flow models: ve
    assert InversionRecord.from_state(tensors, settings).parametrization == "ve"
    assert rec.to(dtype=torch.float64).parametrization == "flow"


@pytest.mark.parametrize("parametrization", ["ve", "flow"])
def test_the_record_holds_no_autograd_graph(parametrization):
    """A model whose weights require grad, called with grad enabled (a script or another pack, not the server's
    inference mode): the record is plain data, so keeping it keeps no step's activations alive."""
    w = torch.nn.Parameter(torch.randn((16, 16)) / 4)
    model = lambda x, sigma, i: torch.tanh(torch.einsum("oc,bchw->bohw", w, x)) * (1 - 0.5 * sigma)  # noqa: E731
    x0 = torch.randn((1, 16, 8, 8))
    sig = flow_sigmas(4) if parametrization == "flow" else torch.tensor([14.6, 5.0, 1.5, 0.4, 0.0], dtype=torch.float64)
    with torch.enable_grad():
        rec = invert(x0, sig, model, seed=1, parametrization=parametrization)
    held = [rec.x_start, rec.noise_maps] + ([rec.states] if rec.states is not None else [])
    assert not any(t.requires_grad or t.grad_fn is not None for t in held)
