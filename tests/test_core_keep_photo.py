"""keep_photo_outside: where no concept's mask has acted, the edit keeps the photo's own states, bitwise."""

import torch

from ledits_core import ConceptSpec, EditGuidance, invert, keep_photo_outside, sample

from .test_core_reconstruction import base_denoiser, edit_denoiser, schedule


def test_acted_is_the_union_of_every_steps_final_masks_within_the_user_mask(latent):
    user = torch.zeros((1, 1, *latent.shape[-2:]))
    user[..., :, :10] = 0.5  # the left half; any value above zero counts
    guidance = EditGuidance([ConceptSpec(scale=3.0, threshold=0.8, user_mask=user)], mask_mode="noise")
    union = torch.zeros((latent.shape[0], 1, *latent.shape[-2:]), dtype=torch.bool)
    for step in range(4):
        pred = torch.randn(latent.shape, generator=torch.Generator().manual_seed(step))
        guidance(step, latent, latent, {0: pred})
        union |= guidance.masks[step][0].final
    assert guidance.acted is not None
    assert torch.equal(guidance.acted, union & (user > 0))
    assert not guidance.acted[..., 10:].any() and guidance.acted[..., :10].any()
    assert union[..., 10:].any()  # the user mask did cut something away
    guidance.reset()
    assert guidance.acted is None and guidance.masks == {}


def test_mask_mode_none_acts_everywhere_or_within_the_user_mask(latent):
    guidance = EditGuidance([ConceptSpec(scale=3.0)], mask_mode="none")
    guidance(0, latent, latent, {0: latent + 1})
    assert guidance.acted.all()
    user = torch.zeros((1, 1, *latent.shape[-2:]))
    user[..., 3:6, 4:9] = 1.0
    guidance = EditGuidance([ConceptSpec(scale=3.0, user_mask=user)], mask_mode="none")
    guidance(0, latent, latent, {0: latent + 1})
    assert torch.equal(guidance.acted.expand(latent.shape[0], -1, -1, -1)[0, 0], user[0, 0] > 0)


def test_keep_photo_outside_is_bitwise_and_none_keeps_everything(latent):
    photo = latent * 0.3
    x = latent + 1.0
    region = torch.zeros((1, 1, *latent.shape[-2:]), dtype=torch.bool)
    region[..., 2:5, 3:7] = True
    out = keep_photo_outside(x, photo, region)
    inside = region.expand_as(x)
    assert torch.equal(out[inside], x[inside]) and torch.equal(out[~inside], photo[~inside])
    assert torch.equal(keep_photo_outside(x, photo, None), photo)


def test_an_edit_that_keeps_the_photo_ends_on_the_photo_outside_where_it_acted(denoiser, latent):
    sigmas = schedule(8, 0.0)
    record = invert(latent, sigmas, base_denoiser(denoiser, 0), seed=5)
    assert record.states is not None
    plain_guidance = EditGuidance([ConceptSpec(scale=4.0, threshold=0.9, warmup=1)], mask_mode="noise")
    plain = sample(record, edit_denoiser(denoiser, plain_guidance))
    guidance = EditGuidance([ConceptSpec(scale=4.0, threshold=0.9, warmup=1)], mask_mode="noise")
    states = list(record.states) + [latent]

    def post_step(i, x):
        return keep_photo_outside(x, states[i + 1], guidance.acted)
    kept = sample(record, edit_denoiser(denoiser, guidance), post_step=post_step)
    outside = ~guidance.acted.expand_as(kept)
    assert outside.float().mean() > 0.3  # the masks (10 % a step, 7 steps) leave much of the latent alone
    assert torch.equal(kept[outside], latent[outside])  # exactly the photo there
    # without it, the edit changes the photo outside its masks too (what the option is for) ...
    assert (plain - latent)[outside].abs().max() > 1e-3
    # ... and inside, the edit still acts
    assert (kept - latent)[~outside].abs().max() > 1e-2
