"""tests/flow_models.py builds SD3.5-medium / Flux.1-dev / Flux.1-schnell models the real host detects and runs.

Detection is checked from shapes alone for every size; loading through the host's UNETLoader path and one
sampling step run on the tiny models, or, where this host's detection cannot reproduce a tiny width (Flux on
hosts that assume width 3072), on the real width with one double and one single block in bf16 (~1 GB).
"""


import pytest
import torch

DETECTED = {"sd35m": "sd3", "flux_dev": "flux_dev", "flux_schnell": "flux_schnell"}


@pytest.mark.parametrize("family", ["sd35m", "flux_dev", "flux_schnell"])
@pytest.mark.parametrize("size", ["tiny", "real", "full"])
def test_detected_family_from_shapes(flow, family, size):
    detected, config = flow.detect(flow.shape_state_dict(family, size))
    assert detected == DETECTED[family]
    ours = flow.unet_config(family, size)
    if size == "full" or (size == "real" and family != "sd35m"):  # every host reads these back exactly
        assert {k: config.get(k) for k in ours} == ours


def _loadable_size(flow, family):
    """"tiny" where this host's detection gives back the tiny config, else "real" (1 double + 1 single)."""
    _, config = flow.detect(flow.shape_state_dict(family, "tiny"))
    ours = flow.unet_config(family, "tiny")
    if {k: config.get(k) for k in ours} == ours:
        return "tiny", None, torch.float32
    return "real", (1, 1), torch.bfloat16


@pytest.mark.parametrize("family", ["sd35m", "flux_dev", "flux_schnell"])
def test_load_detected_and_sample(flow, family):
    size, blocks, dtype = _loadable_size(flow, family)
    built = flow.build_model(family, size, seed=3, dtype=dtype, blocks=blocks)
    loaded = flow.load_detected(flow.state_dict_of(built), dtype=dtype)
    assert flow.family_of(loaded) == DETECTED[family]
    assert loaded.model.model_config.unet_config.get("guidance_embed", False) == (family == "flux_dev")
    latent = flow.latent(1, 8, 12) if size == "real" else flow.latent(2, 16, 12)
    positive = flow.conditioning(family, tokens=16 if size == "real" else None)
    with torch.no_grad():
        out = flow.sample_once(loaded, latent, positive)
        reference = flow.sample_once(built, latent, positive)
    assert out.shape == latent.shape and torch.isfinite(out).all()
    assert torch.equal(out, reference)


@pytest.mark.parametrize("family", ["sd35m", "flux_dev", "flux_schnell"])
def test_dit_replace_and_attention_override_reach_joint_attention(flow, family):
    """A ``patches_replace["dit"]`` entry can mark its block in ``transformer_options``; the
    ``optimized_attention_override`` sees the mark and the joint sequence, text first."""
    model = flow.build_model(family, "tiny", seed=1)
    latent, positive = flow.latent(1, 8, 12), flow.conditioning(family)
    calls = []

    def override(func, *args, **kwargs):
        calls.append((args[0].shape, kwargs["transformer_options"].get("ledits_test_block")))
        return func(*args, **kwargs)

    def replace(name):
        def block(args, extra):
            marked = {**args, "transformer_options": {**args["transformer_options"], "ledits_test_block": name}}
            return extra["original_block"](marked)
        return block

    patched = model.clone()
    patched.model_options["transformer_options"]["optimized_attention_override"] = override
    patched.set_model_patch_replace(replace("double_0"), "dit", "double_block", 0)
    if family != "sd35m":
        patched.set_model_patch_replace(replace("single_1"), "dit", "single_block", 1)
    with torch.no_grad():
        out = flow.sample_once(patched, latent, positive)
        reference = flow.sample_once(model, latent, positive)
    assert torch.equal(out, reference)
    text, image = positive[0][0].shape[1], (latent.shape[-2] // 2) * (latent.shape[-1] // 2)
    joint = text + image
    if family == "sd35m":  # q (B, L, H*D); block 0 has dual attention: its image-only self-attention follows
        assert [(tuple(s)[1], mark) for s, mark in calls] == [(joint, "double_0"), (image, "double_0"), (joint, None)]
    else:  # q (B, H, L, D): double blocks 0, 1, then single blocks 0, 1
        assert [(tuple(s)[2], mark) for s, mark in calls] == [
            (joint, "double_0"), (joint, None), (joint, None), (joint, "single_1")]


@pytest.mark.parametrize("family", ["sd35m", "flux_dev"])
def test_tiny_clip_conditions_a_matching_model(flow, family):
    clip = flow.build_clip(family)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    dims = flow.tiny_clip_text_dims(family)
    tokens = {"sd35m": 77 + 77, "flux_dev": 256}[family]
    assert tuple(cond[0][0].shape) == (1, tokens, dims["context"])
    assert tuple(cond[0][1]["pooled_output"].shape) == (1, dims["pooled"])
    model = flow.build_model(family, "tiny", text_dims=dims)
    with torch.no_grad():
        out = flow.sample_once(model, flow.latent(1, 8, 8), cond)
    assert torch.isfinite(out).all()
