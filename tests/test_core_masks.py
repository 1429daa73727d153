"""Masks and attention accumulation: dtypes, batches, non-square shapes, bounded memory."""

import pytest
import torch

from ledits_core import (
    AttentionAccumulator,
    ConceptSpec,
    EditGuidance,
    attention_mask,
    combine_masks,
    gaussian_kernel,
    gaussian_smooth,
    noise_mask,
    quantile_mask,
)


def test_quantile_mask_per_image_and_fraction():
    values = torch.stack([torch.arange(100.0), 1000 - torch.arange(100.0)]).view(2, 10, 10)
    mask = quantile_mask(values, 0.9)
    assert mask.dtype == torch.float32 and mask.shape == values.shape
    assert mask.flatten(1).sum(1).tolist() == [10.0, 10.0]  # per image, not over the batch
    assert mask[0].flatten()[-10:].all() and mask[1].flatten()[:10].all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_quantile_in_float32_whatever_the_input(dtype):
    values = torch.rand((2, 4, 6, 10), generator=torch.Generator().manual_seed(0)).to(dtype)
    mask = noise_mask(values, 0.75)
    assert mask.dtype == torch.float32 and mask.shape == (2, 1, 6, 10)
    ref = noise_mask(values.float(), 0.75)
    assert torch.equal(mask, ref)


def test_threshold_edges():
    values = torch.rand((1, 4, 8, 8))
    assert noise_mask(values, 0.0).all()
    assert noise_mask(values, 1.0).sum() == 1
    with pytest.raises(ValueError, match="threshold"):
        noise_mask(values, 1.5)


def test_gaussian_kernel_matches_the_formula():
    k = gaussian_kernel()
    g = torch.exp(-(((torch.arange(3.0) - 1) / 1.0) ** 2))
    ref = g[:, None] * g[None, :]
    assert torch.allclose(k, ref / ref.sum())
    flat = torch.ones((2, 5, 7))
    assert torch.allclose(gaussian_smooth(flat), flat)  # a constant map stays constant (reflect padding)


def test_attention_mask_non_square_upsampling():
    attn = torch.zeros((2, 3, 5))
    attn[0, 0, 0] = 1.0
    attn[1, 2, 4] = 1.0
    mask = attention_mask(attn, 0.9, (12, 20))
    assert mask.shape == (2, 1, 12, 20)
    assert mask[0, 0, :4, :4].all() and mask[1, 0, -4:, -4:].all()
    assert not mask[0, 0, -4:, -4:].any()


def test_combine_modes():
    a, n = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 1.0])
    assert torch.equal(combine_masks("intersect", a, n), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(combine_masks("attention", a, n), a)
    assert torch.equal(combine_masks("noise", a, n), n)
    assert combine_masks("none", a, n) is None
    assert torch.equal(combine_masks("intersect", None, n), n)  # no attention captured: degrade to M2
    with pytest.raises(ValueError, match="mask mode"):
        combine_masks("both", a, n)


def test_accumulator_averages_layers_sums_tokens_and_resets():
    acc = AttentionAccumulator({0: torch.tensor([1, 2]), 3: torch.tensor([4])}, (2, 3), keep_history=True)
    assert acc.wants(0, 6) and not acc.wants(0, 24) and not acc.wants(1, 6)
    p1 = torch.softmax(torch.randn((2, 6, 8)), -1)
    p2 = torch.softmax(torch.randn((2, 6, 8)), -1)
    acc.add(0, p1)
    acc.add(0, p2)
    acc.add(3, p1)
    maps = acc.end_step()
    ref0 = ((p1[..., 1:3].sum(-1) + p2[..., 1:3].sum(-1)) / 2).view(2, 2, 3)
    assert torch.allclose(maps[0], ref0) and torch.allclose(maps[3], p1[..., 4].view(2, 2, 3))
    assert acc.maps() == {} and acc.layer_count(0) == 0
    assert len(acc.history) == 1


def test_accumulator_memory_does_not_grow_with_steps():
    acc = AttentionAccumulator({0: torch.tensor([1])}, (4, 4))
    for _ in range(50):
        for _ in range(5):
            acc.add(0, torch.rand((1, 16, 77)))
        acc.end_step()
    assert acc._sums == {} and acc.history == []


def test_edit_guidance_records_masks_and_uses_attention(latent):
    spec = ConceptSpec(scale=2.0, threshold=0.5)
    attn = torch.zeros((2, 3, 5))
    attn[:, :, :2] = 1.0
    guidance = EditGuidance([spec], mask_mode="intersect")
    out = guidance(4, latent, latent, {0: latent + 1}, {0: attn})
    masks = guidance.masks[4][0]
    assert masks.attention.dtype == torch.bool and masks.attention.shape == (2, 1, 12, 20)
    assert torch.equal(masks.final, masks.attention & masks.noise)
    assert torch.allclose(out, latent + 2.0 * masks.final.float())
    # attention mode without a captured map degrades to the noise mask instead of failing
    only_attn = EditGuidance([spec], mask_mode="attention")
    only_attn(0, latent, latent, {0: latent + torch.rand_like(latent)}, None)
    assert only_attn.masks[0][0].final is not None
