"""Exact properties of inversion + sampling: reconstruction, zero guidance, serialisation."""

import json

import pytest
import torch

from ledits_core import (
    ConceptSpec,
    EditGuidance,
    InversionRecord,
    invert,
    karras_sigmas,
    kept_sigmas,
    sample,
    source_guidance,
    total_schedule_steps,
)


def schedule(steps, skip):
    return kept_sigmas(karras_sigmas(total_schedule_steps(steps, skip)), steps)


def base_denoiser(net, source_scale):
    """Unconditional prediction, or CFG towards a 'source prompt' (cond 1) when source_scale > 0."""
    def denoise(x, sigma, i):
        uncond = net(x, sigma, 0)
        return uncond if source_scale == 0 else source_guidance(uncond, net(x, sigma, 1), source_scale)
    return denoise


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "ddpm"])
@pytest.mark.parametrize("skip", [0.0, 0.15, 0.5])
@pytest.mark.parametrize("steps", [2, 10, 50])
@pytest.mark.parametrize("source_scale", [0.0, 3.5])
def test_reconstruction_is_exact(denoiser, latent, sampler, skip, steps, source_scale):
    sigmas = schedule(steps, skip)
    record = invert(latent, sigmas, base_denoiser(denoiser, source_scale), sampler=sampler, seed=7)
    assert record.steps == steps and record.noise_maps.shape == (steps, *latent.shape)
    out = sample(record, base_denoiser(denoiser, source_scale))
    assert (out - latent).abs().max().item() <= 1e-5
    # the start state is really noisy: this is not a trivial identity
    assert (record.x_start - latent).abs().mean() > 0.1 * float(sigmas[0])


def test_reconstruction_needs_the_stored_noise(denoiser, latent):
    """Sampling with fresh noise (as a plain SDE sampler would) does not give x0 back."""
    record = invert(latent, schedule(10, 0.15), base_denoiser(denoiser, 0), seed=3)
    shuffled = InversionRecord(record.sigmas, record.x_start, record.noise_maps.flip(0), record.sampler)
    assert (sample(shuffled, base_denoiser(denoiser, 0)) - latent).abs().max() > 1e-2


def test_skip_keeps_the_requested_steps():
    assert total_schedule_steps(50, 0.15) == 59 and total_schedule_steps(10, 0.0) == 10
    full = karras_sigmas(total_schedule_steps(20, 0.5))
    kept = kept_sigmas(full, 20)
    assert kept.shape == (21,) and kept[-1] == 0 and kept[0] < full[0]
    for bad in [(0, 0.1), (10, 1.0), (10, -0.1)]:
        with pytest.raises(ValueError):
            total_schedule_steps(*bad)


def test_noise_is_independent_per_step_and_seeded(denoiser, latent):
    a = invert(latent, schedule(5, 0), base_denoiser(denoiser, 0), seed=11)
    b = invert(latent, schedule(5, 0), base_denoiser(denoiser, 0), seed=11)
    c = invert(latent, schedule(5, 0), base_denoiser(denoiser, 0), seed=12)
    assert torch.equal(a.noise_maps, b.noise_maps) and torch.equal(a.x_start, b.x_start)
    assert not torch.allclose(a.x_start, c.x_start)


def edit_denoiser(net, guidance, source_scale=0.0):
    """Base prediction + LEDITS++ guidance; concept c uses cond index 2 + c."""
    def denoise(x, sigma, i):
        uncond = net(x, sigma, 0)
        base = uncond if source_scale == 0 else source_guidance(uncond, net(x, sigma, 1), source_scale)
        preds = {c: net(x, sigma, 2 + c) for c in guidance.active(i)}
        return guidance(i, base, uncond, preds, None)
    return denoise


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "ddpm"])
def test_inactive_concepts_change_nothing_and_cost_nothing(denoiser, latent, sampler):
    sigmas = schedule(10, 0.15)
    record = invert(latent, sigmas, base_denoiser(denoiser, 2.0), sampler=sampler, seed=5)
    plain = sample(record, edit_denoiser(denoiser, EditGuidance([]), 2.0))
    denoiser.calls.clear()
    inactive = [ConceptSpec(scale=0.0), ConceptSpec(scale=7.0, warmup=10), ConceptSpec(scale=7.0, cooldown=0)]
    edited = sample(record, edit_denoiser(denoiser, EditGuidance(inactive), 2.0))
    assert torch.equal(plain, edited)
    assert all(cond in (0, 1) for _, cond, _ in denoiser.calls)
    assert (plain - latent).abs().max() <= 1e-5


def test_active_concept_edits_and_window_is_honoured(denoiser, latent):
    sigmas = schedule(10, 0.0)
    record = invert(latent, sigmas, base_denoiser(denoiser, 0), seed=5)
    guidance = EditGuidance([ConceptSpec(scale=4.0, warmup=2, cooldown=6)], mask_mode="noise")
    denoiser.calls.clear()
    edited = sample(record, edit_denoiser(denoiser, guidance))
    concept_sigmas = [s for s, cond, _ in denoiser.calls if cond == 2]
    assert concept_sigmas == [float(s) for s in sigmas[2:6]]
    assert sorted(guidance.masks) == [2, 3, 4, 5]
    assert (edited - latent).abs().max() > 1e-2


def test_unmasked_guidance_is_the_plain_sum(latent):
    uncond, base = latent, latent * 0.5
    preds = {0: latent + 1.0, 1: latent - 2.0}
    specs = [ConceptSpec(scale=3.0), ConceptSpec(scale=2.0, reverse=True)]
    out = EditGuidance(specs, mask_mode="none")(0, base, uncond, preds)
    assert torch.allclose(out, base + 3.0 * 1.0 + (-2.0) * (-2.0))


def test_user_mask_zeroes_the_edit_outside(latent):
    user = torch.zeros((1, 1, 12, 20))
    user[..., :6, :] = 1
    spec = ConceptSpec(scale=5.0, threshold=0.0, user_mask=user)
    out = EditGuidance([spec], mask_mode="noise")(0, latent, latent, {0: latent + 1})
    assert torch.equal(out[..., 6:, :], latent[..., 6:, :])
    assert torch.allclose(out[..., :6, :], latent[..., :6, :] + 5.0)


def test_record_round_trips_through_tensors_and_json(denoiser, latent):
    record = invert(latent, schedule(4, 0.15), base_denoiser(denoiser, 0), sampler="ddpm", seed=9,
                    settings={"family": "sd15", "skip": 0.15})
    tensors, settings = record.to_state()
    restored = InversionRecord.from_state({k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(settings)))
    assert restored.sampler == "ddpm" and restored.settings["family"] == "sd15" and restored.settings["seed"] == 9
    assert torch.equal(sample(restored, base_denoiser(denoiser, 0)), sample(record, base_denoiser(denoiser, 0)))
    with pytest.raises(ValueError, match="format"):
        InversionRecord.from_state(tensors, dict(settings, format_version=99))


def test_progress_and_interrupt(denoiser, latent):
    seen = []
    record = invert(latent, schedule(3, 0), base_denoiser(denoiser, 0), callback=lambda i, x, d: seen.append(i))
    assert seen == [0, 1, 2]

    class Stop(Exception):
        pass

    def interrupt():
        if len(seen) >= 4:
            raise Stop

    with pytest.raises(Stop):
        sample(record, base_denoiser(denoiser, 0), callback=lambda i, x, d: seen.append(i), interrupt=interrupt)
    assert seen == [0, 1, 2, 0]
