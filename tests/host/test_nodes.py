"""The LEDITS++ nodes on the real host, with tiny random SD1.5-, SD2-v- and SDXL-shaped models."""

import pytest
import torch

FAMILIES = ["sd15", "sd2v", "sdxl"]
STEPS = 5


@pytest.fixture(scope="session")
def pack(host, random_models):
    """The pack's node modules (as the host loaded them) and ``random_models`` (scripts/, not the pack)."""
    host.load_pack()
    names = ["inversion_node", "concept_node", "sampler_nodes", "guider", "capture", "host_model"]
    return {**{n: host.import_pack_module(f"nodes.{n}") for n in names}, "random_models": random_models}


@pytest.fixture(scope="session")
def models(pack):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = pack["random_models"].build_random_model(family, "tiny", seed=0)
        return cache[family]
    return get


def photo_latent(batch=2, h=12, w=20, seed=0):
    """A stand-in for an encoded photo: non-square, batch 2, VAE-latent-like magnitudes."""
    return torch.randn((batch, 4, h, w), generator=torch.Generator().manual_seed(seed)) * 0.8


def invert(pack, model, clip, latent, **kw):
    args = dict(steps=STEPS, skip=0.15, sampler="dpmpp_2m_sde", scheduler="karras", seed=3)
    args.update(kw)
    return pack["inversion_node"].invert_latent(model, clip, {"samples": latent}, **args)


def concept(pack, clip, text="sunglasses", **kw):
    args = dict(scale=5.0, threshold=0.9, reverse=False, warmup=0.0, cooldown=1.0)
    args.update(kw)
    return pack["concept_node"].make_concept(clip, text, **args)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "ddpm"])
def test_reconstruction_through_the_nodes(pack, models, family, sampler):
    model, clip, _ = models(family)
    latent = photo_latent()
    inv = invert(pack, model, clip, latent, sampler=sampler)
    out, masks = pack["sampler_nodes"].run_edit(model, inv, None)
    err = (out - latent).abs().max().item()
    print(f"[reconstruction] {family} {sampler}: max abs error {err:.3g}")
    assert err <= 1e-4
    assert masks.labels == [] and masks.per_step == {}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_reconstruction_with_source_prompt(pack, models, family):
    model, clip, _ = models(family)
    latent = photo_latent(batch=1)
    source = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a man"))
    inv = invert(pack, model, clip, latent, source=source, source_scale=3.5)
    out, _ = pack["sampler_nodes"].run_edit(model, inv, None)
    assert (out - latent).abs().max().item() <= 1e-4


def plain_ksampler(host, model, latent):
    nodes = host.import_host()
    positive = [[torch.zeros((1, 77, model.model.model_config.unet_config["context_dim"])), {}]]
    if model.model.model_config.unet_config.get("adm_in_channels"):
        positive[0][1]["pooled_output"] = torch.zeros((1, _pooled_dim(model)))
    return nodes.common_ksampler(model, 7, 3, 4.0, "euler", "normal", positive, positive,
                                 {"samples": latent.clone()}, denoise=1.0)[0]["samples"]


def _pooled_dim(model):
    return model.model.model_config.unet_config["adm_in_channels"] - 6 * 256


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_incoming_model_is_untouched(host, pack, models, family):
    model, clip, _ = models(family)
    latent = photo_latent(batch=1)
    options_before = repr(model.model_options)
    patches_before = dict(model.patches)
    before = plain_ksampler(host, model, latent)
    inv = invert(pack, model, clip, latent)
    pack["sampler_nodes"].run_edit(model, inv, (concept(pack, clip), concept(pack, clip, "hat")))
    guider = pack["guider"].edit_guider(model, inv, [concept(pack, clip)], "intersect")
    assert guider.model_patcher is not model
    after = plain_ksampler(host, model, latent)
    assert torch.equal(before, after)
    assert repr(model.model_options) == options_before and dict(model.patches) == patches_before
    assert "attn2" not in model.model_options.get("transformer_options", {}).get("patches_replace", {})


EXPECTED_BLOCKS = {
    "sd15": [("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)],
    "sd2v": [("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)],
    "sdxl": [("input", 7), ("input", 8), ("output", 0), ("output", 1), ("output", 2)],
}


def transformer_count(model, blocks):
    unet = model.model.diffusion_model
    total = 0
    for name, number in blocks:
        block = (unet.input_blocks if name == "input" else unet.output_blocks)[number]
        total += sum(1 for m in block.modules() if type(m).__name__ == "BasicTransformerBlock")
    return total


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_is_captured_from_exactly_the_quarter_resolution_layers(pack, models, family):
    model, clip, _ = models(family)
    blocks = pack["host_model"].quarter_resolution_blocks(model)
    assert blocks == EXPECTED_BLOCKS[family]
    latent = photo_latent(batch=1, h=16, w=24)
    inv = invert(pack, model, clip, latent)
    guider = pack["guider"].edit_guider(model, inv, [concept(pack, clip)], "intersect")
    seen = []
    capture = guider.capture
    original = capture.end_step

    def end_step():
        seen.append((capture.layers_seen, capture.accumulator.target_hw if capture.accumulator else None))
        return original()
    capture.end_step = end_step
    sampler = pack["guider"].edit_sampler(inv)
    zeros = torch.zeros(latent.shape)
    guider.sample(zeros, zeros, sampler, inv.record.sigmas.float())
    expected = transformer_count(model, blocks)
    print(f"[attention] {family}: {expected} cross-attention layers at 1/4 resolution per step")
    assert expected > 0
    assert seen == [(expected, (4, 6))] * STEPS
    keys = guider.model_patcher.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert sorted(keys) == sorted(blocks)


def step_recorder(guider):
    """Make the guider's guidance record (step, guided - base, masks of that step) on every call."""
    records = []
    base_cls = type(guider.guidance)

    class Recording(base_cls):
        def __call__(self, step, base, uncond, preds, attn_maps=None):
            out = base_cls.__call__(self, step, base, uncond, preds, attn_maps)
            records.append((step, (out - base).cpu(), self.masks.get(step, {})))
            return out
    guider.guidance.__class__ = Recording
    return records


def run_guided(pack, model, inv, concepts, mask_mode):
    guider = pack["guider"].edit_guider(model, inv, concepts, mask_mode)
    records = step_recorder(guider)
    zeros = torch.zeros(inv.latent_shape)
    out = guider.sample(zeros, zeros, pack["guider"].edit_sampler(inv), inv.record.sigmas.float())
    return out, records


def test_guidance_acts_only_inside_its_mask(pack, models):
    model, clip, _ = models("sd15")
    latent = photo_latent()
    inv = invert(pack, model, clip, latent)
    out, records = run_guided(pack, model, inv, [concept(pack, clip, threshold=0.7)], "intersect")
    assert len(records) == STEPS
    for _, delta, masks in records:
        final = masks[0].final
        assert final.any() and not final.all()
        outside = delta * (~final).float()
        assert outside.abs().max() == 0
        assert (delta * final.float()).abs().max() > 0
    assert (out - latent).abs().max() > 1e-3


def test_reverse_flips_the_sign(pack, models):
    model, clip, _ = models("sd15")
    inv = invert(pack, model, clip, photo_latent(batch=1))
    _, fwd = run_guided(pack, model, inv, [concept(pack, clip, reverse=False)], "none")
    _, rev = run_guided(pack, model, inv, [concept(pack, clip, reverse=True)], "none")
    # the first step sees the same state, so the edit direction is exactly opposite there
    assert torch.allclose(fwd[0][1], -rev[0][1], atol=1e-6) and fwd[0][1].abs().max() > 0


def test_user_mask_zeroes_the_edit_outside_it(pack, models):
    model, clip, _ = models("sd15")
    latent = photo_latent(batch=1)
    inv = invert(pack, model, clip, latent)
    user = torch.zeros((1, 96, 160))
    user[:, :, :80] = 1.0  # left half of a 96x160 image -> left 10 of 20 latent columns
    _, records = run_guided(pack, model, inv, [concept(pack, clip, mask=user)], "none")
    for _, delta, _ in records:
        assert delta[..., 10:].abs().max() == 0 and delta[..., :10].abs().max() > 0


def test_chained_concepts_keep_order_and_windows(pack, models, host):
    model, clip, _ = models("sd15")
    node = pack["concept_node"].LeditsConceptEdit
    first = node.execute(clip, "sunglasses", 5.0, 0.9, False, 0.0, 1.0).result[0]
    second = node.execute(clip, "beard", 4.0, 0.8, True, 0.4, 0.8, previous=first).result[0]
    third = node.execute(clip, "smile", 3.0, 0.9, False, 0.0, 0.2, previous=second).result[0]
    assert [c.label for c in third] == ["sunglasses", "beard", "smile"] and len(first) == 1
    inv = invert(pack, model, clip, photo_latent(batch=1))
    _, masks = pack["sampler_nodes"].run_edit(model, inv, third)
    assert masks.labels == ["sunglasses", "beard", "smile"]
    steps_of = {c: sorted(s for s, per in masks.per_step.items() if c in per) for c in range(3)}
    assert steps_of == {0: [0, 1, 2, 3, 4], 1: [2, 3], 2: [0]}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_guider_with_sampler_custom_advanced_equals_the_sampler(host, pack, models, family):
    host.load_builtin_extras()
    nodes = host.import_host()
    model, clip, _ = models(family)
    latent = photo_latent(batch=1)
    inv = invert(pack, model, clip, latent)
    concepts = (concept(pack, clip), concept(pack, clip, "hat", reverse=True))
    expected, _ = pack["sampler_nodes"].run_edit(model, inv, concepts)
    guider, sampler, sigmas, noise = pack["sampler_nodes"].LeditsGuiderNode.execute(
        model, inv, "intersect", concepts).result
    sca = nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]
    out = sca().sample(noise, guider, sampler, sigmas, {"samples": latent})[0]["samples"]
    assert torch.equal(out.cpu(), expected)


def test_clear_errors(pack, models, host):
    model, clip, _ = models("sd15")
    xl_model, xl_clip, _ = models("sdxl")
    inv = invert(pack, model, clip, photo_latent(batch=1))
    with pytest.raises(ValueError, match="inversion was made with a sd1"):
        pack["sampler_nodes"].run_edit(xl_model, inv, None)
    with pytest.raises(ValueError, match="empty"):
        concept(pack, clip, "   ")
    with pytest.raises(ValueError, match="threshold"):
        concept(pack, clip, threshold=1.5)
    host.load_builtin_extras()
    nodes = host.import_host()
    guider, sampler, sigmas, noise = pack["sampler_nodes"].LeditsGuiderNode.execute(
        model, inv, "intersect", None).result
    sca = nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]
    with pytest.raises(ValueError, match="latent of shape"):
        sca().sample(noise, guider, sampler, sigmas, {"samples": photo_latent(batch=1, h=16, w=16)})
    with pytest.raises(ValueError, match="SIGMAS"):
        sca().sample(noise, guider, sampler, sigmas[1:], {"samples": photo_latent(batch=1)})


def test_unsupported_model_is_refused(pack, random_models):
    """A model of a family the pack does not carry (here: a stand-in for one) gets an error naming what is."""
    import types

    class OtherModel:  # not a UNet of SD1.x/2.x/SDXL, nor SD3, Flux or Chroma
        model_config = types.SimpleNamespace(unet_config={})
        diffusion_model = torch.nn.Identity()

    with pytest.raises(ValueError, match="supports SD1.x, SD2.x .*SD3/SD3.5, Flux.1 .*and Chroma"):
        pack["host_model"].model_kind(types.SimpleNamespace(model=OtherModel()))
