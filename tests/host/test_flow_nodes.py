"""The LEDITS++ nodes on flow-matching transformers (SD3.5-medium, Flux.1-dev, Flux.1-schnell, Chroma), tiny random
models built through the host's own classes (tests/flow_models.py) with tiny text encoders of their layout."""

import dataclasses
import logging

import pytest
import torch

FAMILIES = ["sd35m", "flux_dev", "flux_schnell", "chroma"]
STEPS = 5


@pytest.fixture(scope="module")
def pack(host):
    host.load_pack()
    names = ["inversion_node", "concept_node", "sampler_nodes", "guider", "host_model", "prompt_edit_node"]
    return {n: host.import_pack_module(f"nodes.{n}") for n in names}


@pytest.fixture(scope="module")
def models(flow):
    cache = {}

    def get(family):
        if family not in cache:
            model = flow.build_model(family, "tiny", seed=0, text_dims=flow.tiny_clip_text_dims(family))
            cache[family] = (model, flow.build_clip(family, seed=0))
        return cache[family]
    return get


def photo(batch=2, h=12, w=20, seed=0):
    """A stand-in for an encoded photo: 16 channels, non-square, batch 2."""
    return torch.randn((batch, 16, h, w), generator=torch.Generator().manual_seed(seed))


def invert(pack, model, clip, latent, **kw):
    args = dict(steps=STEPS, skip=0.0, sampler="dpmpp_2m_sde", scheduler="simple", seed=3)
    args.update(kw)
    return pack["inversion_node"].invert_latent(model, clip, {"samples": latent}, **args)


def concept(pack, clip, text="sunglasses", **kw):
    args = dict(scale=5.0, threshold=0.9, reverse=False, warmup=0.0, cooldown=1.0)
    args.update(kw)
    return pack["concept_node"].make_concept(clip, text, **args)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_family_is_recognised(pack, models, family):
    model, _ = models(family)
    kind = pack["host_model"].model_kind(model)
    assert (kind.family, kind.prediction) == ({"sd35m": "sd3", "chroma": "chroma"}.get(family, "flux"), "flow")
    assert kind.distilled == (family == "flux_dev")
    assert pack["host_model"].noise_parametrization(model) == "flow"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "ddpm"])
@pytest.mark.parametrize("skip", [0.0, 0.15, 0.5])
def test_reconstruction_through_the_nodes(pack, models, family, sampler, skip):
    model, clip = models(family)
    latent = photo()
    inv = invert(pack, model, clip, latent, sampler=sampler, skip=skip)
    assert inv.record.settings.get("parametrization", getattr(inv.record, "parametrization", None)) == "flow"
    out, masks = pack["sampler_nodes"].run_edit(model, inv, None)
    err = (out - latent).abs().max().item()
    print(f"[reconstruction] {family} {sampler} skip {skip}: max abs error {err:.3g}")
    assert err <= 1e-4
    assert masks.labels == []


@pytest.mark.parametrize("family", FAMILIES)
def test_reconstruction_with_source_prompt(pack, models, family):
    model, clip = models(family)
    latent = photo(batch=1)
    source = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a man"))
    inv = invert(pack, model, clip, latent, source=source, source_scale=3.5)
    out, _ = pack["sampler_nodes"].run_edit(model, inv, None)
    assert (out - latent).abs().max().item() <= 1e-4


def plain_sample(flow, family, model, latent):
    """One plain host sampling step on the same MODEL (to see that the edit left it as it was)."""
    cond = flow.conditioning(family, text_dims=flow.tiny_clip_text_dims(family))
    return flow.sample_once(model, latent.clone(), cond, seed=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_edit_changes_the_photo_and_leaves_the_model_untouched(pack, models, flow, family, caplog):
    model, clip = models(family)
    latent = photo(batch=1)
    options_before, patches_before = repr(model.model_options), dict(model.patches)
    before = plain_sample(flow, family, model, latent)
    inv = invert(pack, model, clip, latent)
    with caplog.at_level(logging.WARNING):
        out, masks = pack["sampler_nodes"].run_edit(model, inv, (concept(pack, clip),
                                                                 concept(pack, clip, "hat", reverse=True)))
    assert "no joint attention" not in caplog.text
    assert (out - latent).abs().max().item() > 1e-3, "two concepts at scale 5 change the latent"
    assert masks.labels == ["sunglasses", "hat"] and len(masks.per_step) == STEPS
    assert all(m.attention is not None for step in masks.per_step.values() for m in step.values()), "M1 at every step"
    after = plain_sample(flow, family, model, latent)
    assert torch.equal(before, after)
    assert repr(model.model_options) == options_before and dict(model.patches) == patches_before


@pytest.mark.parametrize("family", ["sd35m", "flux_dev", "chroma"])
def test_guider_with_sampler_custom_advanced_equals_the_sampler(host, pack, models, family):
    host.load_builtin_extras()
    nodes = host.import_host()
    model, clip = models(family)
    latent = photo(batch=1)
    inv = invert(pack, model, clip, latent)
    concepts = (concept(pack, clip), concept(pack, clip, "hat", reverse=True))
    expected, _ = pack["sampler_nodes"].run_edit(model, inv, concepts, "noise")
    guider, sampler, sigmas, noise = pack["sampler_nodes"].LeditsGuiderNode.execute(
        model, inv, "noise", concepts).result
    sca = nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]
    out = sca().sample(noise, guider, sampler, sigmas, {"samples": latent})[0]["samples"]
    assert torch.equal(out.cpu(), expected)


def test_concept_tokens_are_found_in_each_text_stream(pack, models):
    """SD3: CLIP rows then T5 rows; Flux and Chroma: T5 rows alone; the positions are the prompt's own tokens."""
    for family in FAMILIES:
        _, clip = models(family)
        c = concept(pack, clip, "red hat")
        assert c.context_len == int(c.conditioning[0][0].shape[1])
        assert all(0 <= p < c.context_len for p in c.token_positions)
        streams = 2 if family == "sd35m" else 1  # each stream holds the prompt's words at least once
        assert len(c.token_positions) >= 2 * streams


def test_nodes_called_with_grad_enabled_keep_no_autograd_graph(pack, flow):
    """Called in-process with grad enabled on weights that require grad (0.3.64 leaves them so; the server's
    inference mode hides it): the inversion, the edit's latent and its masks are plain data. Before the fix
    each call kept its steps' activations alive (+330 MB per call on tiny Flux, CI ran out of memory)."""
    model = flow.build_model("flux_schnell", "tiny", seed=0, text_dims=flow.tiny_clip_text_dims("flux_schnell"))
    model.model.diffusion_model.requires_grad_(True)
    clip = flow.build_clip("flux_schnell", seed=0)
    with torch.enable_grad():
        inv = invert(pack, model, clip, photo(batch=1))
        out, masks = pack["sampler_nodes"].run_edit(model, inv, (concept(pack, clip),), "noise")
    record = inv.record
    held = [record.x_start, record.noise_maps, out] + ([record.states] if record.states is not None else [])
    held += [m for step in masks.per_step.values() for m in _tensors(step)]
    assert len(held) > 4, "the edit recorded masks"
    assert not any(t.requires_grad or t.grad_fn is not None for t in held)


def _tensors(value):
    if torch.is_tensor(value):
        return [value]
    if dataclasses.is_dataclass(value):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for v in value for t in _tensors(v)] if isinstance(value, (list, tuple)) else []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs(pack, flow, dtype):
    model = flow.build_model("flux_schnell", "tiny", seed=0, dtype=dtype,
                             text_dims=flow.tiny_clip_text_dims("flux_schnell"))
    clip = flow.build_clip("flux_schnell", seed=0)
    latent = photo(batch=1)
    inv = invert(pack, model, clip, latent)
    out, _ = pack["sampler_nodes"].run_edit(model, inv, (concept(pack, clip),))
    assert torch.isfinite(out).all()


def test_prompt_edit_is_refused_before_any_work(pack, models):
    model, clip = models("flux_schnell")
    inv = invert(pack, model, clip, photo(batch=1))
    edit = object.__new__(pack["prompt_edit_node"].LeditsPromptEdit)
    with pytest.raises(ValueError, match="Prompt Edit does not support flux"):
        pack["prompt_edit_node"].check_prompt_edit(inv, edit)


def test_an_inversion_of_another_family_is_refused(pack, models):
    sd3, sd3_clip = models("sd35m")
    flux, _ = models("flux_schnell")
    inv = invert(pack, sd3, sd3_clip, photo(batch=1))
    with pytest.raises(ValueError, match="inversion was made with a sd3"):
        pack["sampler_nodes"].run_edit(flux, inv, None)


@pytest.mark.parametrize("family", FAMILIES)
def test_m1_is_captured_at_the_chosen_blocks_for_the_concept_rows_only(pack, models, host, family):
    model, clip = models(family)
    joint = host.import_pack_module("nodes.joint_capture")
    inv = invert(pack, model, clip, photo(batch=1, h=12, w=20))
    concepts = [concept(pack, clip), concept(pack, clip, "red hat")]
    guider = pack["guider"].edit_guider(model, inv, concepts, "intersect")
    capture = guider.capture
    assert isinstance(capture, joint.JointAttentionCapture) and capture.grid == (6, 10)
    seen = []
    record = capture.record

    def spy(q, k, heads, skip_reshape, text_len, image_len, chunks, block):
        before = capture.layers_seen
        record(q, k, heads, skip_reshape, text_len, image_len, chunks, block)
        if capture.layers_seen > before:
            seen.append((block, tuple(chunks), {c: capture.cond_to_concept.get(c) for c in chunks}))
    capture.record = spy
    zeros = torch.zeros(inv.latent_shape)
    guider.sample(zeros, zeros, pack["guider"].edit_sampler(inv), inv.record.sigmas.float(), disable_pbar=True, seed=0)
    chosen = joint.double_blocks(model)
    assert sorted({b for b, _, _ in seen}) == chosen
    # One joint call per chosen block, step and batch row (not SD3.5's image-only one). The rows share one call when
    # the host batches them; Chroma's T5 is not padded, so prompts of other lengths are separate calls, as in the
    # host's own CFG. The uncond row is seen but only the concept rows are recorded (cond 1, 2 -> concept 0, 1).
    for row in (0, 1, 2):
        assert sum(row in chunks for _, chunks, _ in seen) == STEPS * len(chosen)
    assert all(mapping == {c: {0: None, 1: 0, 2: 1}[c] for c in chunks} for _, chunks, mapping in seen)
    if family != "chroma":
        assert len(seen) == STEPS * len(chosen), "one batched model call per step"


def test_joint_attention_map_is_the_image_queries_probabilities_on_the_concept_tokens(host):
    joint = host.import_pack_module("nodes.joint_capture")
    capture = joint.JointAttentionCapture({0: [1, 3]}, (4, 6), 2)  # grid 2 x 3 = 6 image tokens
    capture.begin_step({1: 0})
    gen = torch.Generator().manual_seed(0)
    text, image, heads, d = 5, 6, 2, 8
    q = torch.randn((2, heads, text + image, d), generator=gen)  # batch: [uncond, concept 0]
    k = torch.randn((2, heads, text + image, d), generator=gen)
    capture.enabled = True
    capture.record(q, k, heads, True, text, image, [0, 1], block=0)
    maps = capture.end_step()
    probs = torch.softmax(q[1:, :, text:] @ k[1:].transpose(-1, -2) / d ** 0.5, dim=-1).mean(1)
    want = probs[..., [1, 3]].sum(-1).view(1, 2, 3)
    assert set(maps) == {0} and torch.allclose(maps[0], want, atol=1e-6)
    # the same call in the (B, L, H*D) layout of SD3
    capture.begin_step({1: 0})
    flat = lambda t: t.transpose(1, 2).reshape(2, text + image, heads * d)  # noqa: E731
    capture.record(flat(q), flat(k), heads, False, text, image, [0, 1], block=0)
    assert torch.allclose(capture.end_step()[0], want, atol=1e-6)


def test_chained_onto_another_packs_attention_override_and_block_patch(pack, models, flow):
    """Another pack's optimized_attention_override and dit block replacement stay in force under the capture,
    and the capture's wrappers change nothing computed: plain sampling on the patched clone is bitwise equal."""
    model, clip = models("flux_dev")
    calls = {"attention": 0, "block": 0}

    def their_override(func, *args, **kwargs):
        calls["attention"] += 1
        return func(*args, **kwargs)

    def their_block(args, extra):
        calls["block"] += 1
        return extra["original_block"](args)
    theirs = model.clone()
    theirs.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = their_override
    theirs.set_model_patch_replace(their_block, "dit", "double_block", 0)
    latent = photo(batch=1)
    before = plain_sample(flow, "flux_dev", theirs, latent)
    plain_calls = dict(calls)
    inv = invert(pack, theirs, clip, latent)
    guider = pack["guider"].edit_guider(theirs, inv, [concept(pack, clip)], "intersect")
    calls.update(attention=0, block=0)
    after = plain_sample(flow, "flux_dev", guider.model_patcher, latent)
    assert torch.equal(before, after)
    assert calls == plain_calls and calls["block"] > 0 and calls["attention"] > 0
    out, masks = pack["sampler_nodes"].run_edit(theirs, inv, (concept(pack, clip),))
    assert all(m.attention is not None for step in masks.per_step.values() for m in step.values())
