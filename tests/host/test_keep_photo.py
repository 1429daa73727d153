"""keep_photo_outside_masks on the real host: outside where the edits' masks acted, the photo itself, on a UNet
and a flow transformer, through LEDITS Sampler and LEDITS Guider + SamplerCustomAdvanced; the clear error and the
warnings."""

import logging

import pytest
import torch

STEPS = 5


@pytest.fixture(scope="module")
def pack(host):
    host.load_pack()
    names = ["inversion_node", "concept_node", "sampler_nodes", "guider", "prompt_edit_node"]
    return {n: host.import_pack_module(f"nodes.{n}") for n in names}


@pytest.fixture(scope="module")
def models(random_models, flow):
    cache = {}

    def get(family):
        if family not in cache:
            if family == "sd15":
                model, clip, _ = random_models.build_random_model("sd15", "tiny", seed=0)
            else:
                model = flow.build_model(family, "tiny", seed=0, text_dims=flow.tiny_clip_text_dims(family))
                clip = flow.build_clip(family, seed=0)
            cache[family] = (model, clip)
        return cache[family]
    return get


def setup(pack, models, family, batch=2):
    model, clip = models(family)
    channels = 4 if family == "sd15" else 16
    latent = torch.randn((batch, channels, 12, 20), generator=torch.Generator().manual_seed(0)) * 0.8
    args = dict(steps=STEPS, skip=0.15 if family == "sd15" else 0.0, sampler="dpmpp_2m_sde",
                scheduler="karras" if family == "sd15" else "simple", seed=3)
    inv = pack["inversion_node"].invert_latent(model, clip, {"samples": latent}, **args)
    return model, clip, latent, inv


def concept(pack, clip, text="sunglasses", **kw):
    args = dict(scale=5.0, threshold=0.9, reverse=False, warmup=0.0, cooldown=1.0)
    args.update(kw)
    return pack["concept_node"].make_concept(clip, text, **args)


def acted(masks, batch):
    """The union over steps and concepts of the final masks the LEDITS_MASKS recorded, (B, 1, H, W) bool."""
    union = None
    for per_concept in masks.per_step.values():
        for m in per_concept.values():
            union = m.final if union is None else union | m.final
    return union.expand(batch, -1, -1, -1)


@pytest.mark.parametrize("family", ["sd15", "sd35m"])
def test_outside_the_masks_the_photo_itself(host, pack, models, family):
    model, clip, latent, inv = setup(pack, models, family)
    concepts = (concept(pack, clip), concept(pack, clip, "hat", reverse=True, warmup=0.4))
    plain, _ = pack["sampler_nodes"].run_edit(model, inv, concepts)
    out, masks = pack["sampler_nodes"].run_edit(model, inv, concepts, keep_photo=True)
    outside = ~acted(masks, latent.shape[0]).expand_as(out)
    share = outside.float().mean().item()
    print(f"[keep photo] {family}: {share:.2f} of the latent outside the masks")
    assert 0.05 < share < 0.95
    assert torch.equal(out[outside], latent[outside])
    assert (plain - latent)[outside].abs().max() > 1e-4  # without it, the edit reaches there too
    assert (out - latent)[~outside].abs().max() > 1e-3  # inside, it still edits
    # the Guider through SamplerCustomAdvanced: the same, to the latent format's rounding
    host.load_builtin_extras()
    sca = host.import_host().NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]
    guider, sampler, sigmas, noise = pack["sampler_nodes"].LeditsGuiderNode.execute(
        model, inv, "intersect", concepts, None, True).result
    out2 = sca().sample(noise, guider, sampler, sigmas, {"samples": latent})[0]["samples"].cpu()
    assert (out2 - out).abs().max() <= 1e-5
    # off (the default) is the edit as before
    again, _ = pack["sampler_nodes"].run_edit(model, inv, concepts, keep_photo=False)
    assert torch.equal(again, plain)


def test_mask_mode_none_with_a_user_mask_keeps_the_photo_outside_it(pack, models):
    model, clip, latent, inv = setup(pack, models, "sd15", batch=1)
    user = torch.zeros((1, 96, 160))
    user[:, 16:64, 24:88] = 1.0  # pixels; the latent is 12 x 20
    out, _ = pack["sampler_nodes"].run_edit(model, inv, (concept(pack, clip, mask=user),), "none", keep_photo=True)
    inside = torch.zeros_like(out, dtype=torch.bool)
    inside[..., 2:8, 3:11] = True
    assert torch.equal(out[~inside], latent[~inside])
    assert (out - latent)[inside].abs().max() > 1e-3


def test_with_a_prompt_edit_its_local_blend_counts_as_its_mask(pack, models):
    model, clip, latent, inv = setup(pack, models, "sd15")
    source = "a cat sitting on a sofa"
    inv = pack["inversion_node"].invert_latent(model, clip, {"samples": latent}, steps=STEPS, skip=0.15,
                                               sampler="dpmpp_2m_sde", scheduler="karras", seed=3,
                                               source=clip.encode_from_tokens_scheduled(clip.tokenize(source)))
    edit = pack["prompt_edit_node"].make_prompt_edit(clip, source, "a dog sitting on a sofa", scale=7.5,
                                                     cross_replace=0.8, self_replace=0.4, blend_words="cat dog",
                                                     blend_threshold=0.9)
    concepts = (concept(pack, clip, "hat"),)
    out, masks = pack["sampler_nodes"].run_edit(model, inv, concepts, "intersect", edit, keep_photo=True)
    assert masks.labels == ["hat", "local blend: cat dog"]
    concept_union = None
    for per_concept in masks.per_step.values():
        if 0 in per_concept:
            concept_union = per_concept[0].final if concept_union is None else concept_union | per_concept[0].final
    blend = masks.per_step[STEPS - 1][1].final
    outside = ~(concept_union | blend).expand_as(out)
    assert outside.any()
    assert torch.equal(out[outside], latent[outside])


def test_an_inversion_without_the_photos_path_is_refused_before_any_work(pack, models):
    model, clip, latent, inv = setup(pack, models, "sd15", batch=1)
    record = inv.record
    old = type(inv)(**{**inv.__dict__, "record": type(record)(**{**record.__dict__, "states": None})})
    with pytest.raises(ValueError, match="re-run LEDITS Inversion"):
        pack["sampler_nodes"].run_edit(model, old, (concept(pack, clip),), keep_photo=True)
    with pytest.raises(ValueError, match="re-run LEDITS Inversion"):
        pack["sampler_nodes"].LeditsGuiderNode.execute(model, old, "intersect", (concept(pack, clip),), None, True)
    no_photo = type(inv)(**{**inv.__dict__, "photo": None})  # an inversion loaded without its photo
    with pytest.raises(ValueError, match="re-run LEDITS Inversion"):
        pack["sampler_nodes"].run_edit(model, no_photo, (concept(pack, clip),), keep_photo=True)
    out, _ = pack["sampler_nodes"].run_edit(model, old, (concept(pack, clip),))  # off: as before
    assert torch.isfinite(out).all()


def test_settings_that_keep_nothing_say_so(pack, models, caplog):
    model, clip, latent, inv = setup(pack, models, "sd15", batch=1)
    with caplog.at_level(logging.WARNING):
        out, _ = pack["sampler_nodes"].run_edit(model, inv, (concept(pack, clip),), "none", keep_photo=True)
    assert "mask_mode none" in caplog.text
    plain, _ = pack["sampler_nodes"].run_edit(model, inv, (concept(pack, clip),), "none")
    assert torch.equal(out, plain)  # it acted everywhere, so nothing was kept: the edit as without the option
