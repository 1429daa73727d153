"""Random-weight models (scripts/random_models.py) behave like loaded checkpoints in the real host."""

import os

import pytest
import torch

FAMILIES = ("sd15", "sd2v", "sdxl")
# Attention layers at 1/4 of the latent resolution: (block name, block number) -> transformer blocks in it.
QUARTER_RES_KEYS = {
    "sd15": {("input", 7): 1, ("input", 8): 1, ("output", 3): 1, ("output", 4): 1, ("output", 5): 1},
    "sd2v": {("input", 7): 1, ("input", 8): 1, ("output", 3): 1, ("output", 4): 1, ("output", 5): 1},
    "sdxl": {("input", 7): 2, ("input", 8): 2, ("output", 0): 2, ("output", 1): 2, ("output", 2): 2},
}


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, random_models):
    """(family, model, clip, vae) for one tiny family, built once per module."""
    return (request.param, *random_models.build_random_model(request.param, "tiny", seed=0))


def encode(clip, text):
    """CONDITIONING from the host's CLIPTextEncode node."""
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0]


def ksample(model, clip, latent, seed, steps=2, cfg=5.0):
    """Sample with the host's KSampler node (euler, normal schedule); returns the latent tensor."""
    import nodes

    positive, negative = encode(clip, "a photo of a cat"), encode(clip, "")
    out = nodes.KSampler().sample(model, seed, steps, cfg, "euler", "normal", positive, negative,
                                  {"samples": latent}, denoise=1.0)[0]
    return out["samples"]


def test_model_sampling_type(tiny):
    import comfy.model_sampling as ms

    family, model, _, _ = tiny
    sampling = model.get_model_object("model_sampling")
    expected = ms.V_PREDICTION if family == "sd2v" else ms.EPS
    assert isinstance(sampling, expected)
    assert family == "sd2v" or not isinstance(sampling, ms.V_PREDICTION)


def test_ksampler_non_square_deterministic(tiny):
    _, model, clip, _ = tiny
    latent = torch.zeros(1, 4, 24, 40)
    a = ksample(model, clip, latent, seed=1)
    b = ksample(model, clip, latent, seed=1)
    c = ksample(model, clip, latent, seed=2)
    assert a.shape == latent.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_same_seed_same_weights(tiny, random_models):
    family, model, _, _ = tiny
    again = random_models.build_unet(family, "tiny", seed=0).model.state_dict()
    other = random_models.build_unet(family, "tiny", seed=1).model.state_dict()
    for key, value in model.model.state_dict().items():
        assert torch.equal(value, again[key]), key
    assert any(not torch.equal(value, other[key]) for key, value in again.items())


def test_clip_text_encode(tiny, random_models):
    family, _, clip, _ = tiny
    cond, extra = encode(clip, "a photo of a (cat:1.2)")[0]
    context = random_models.unet_config(family)["context_dim"]
    assert cond.shape == (1, 77, context) and torch.isfinite(cond).all()
    assert extra["pooled_output"].shape[0] == 1
    if family == "sdxl":
        assert extra["pooled_output"].shape[1] + 6 * 256 == random_models.unet_config(family)["adm_in_channels"]
    tokens = next(iter(clip.tokenize("a photo of a cat", return_word_ids=True).values()))[0]
    assert tokens[:7] == [(49406, 1.0, 0), (320, 1.0, 1), (1125, 1.0, 1), (539, 1.0, 1), (320, 1.0, 1),
                          (2368, 1.0, 1), (49407, 1.0, 0)]


def test_vae_encode_decode(tiny):
    import nodes

    _, _, _, vae = tiny
    image = torch.rand(1, 64, 96, 3)
    latent = nodes.VAEEncode().encode(vae, image)[0]["samples"]
    assert latent.shape == (1, 4, 8, 12) and torch.isfinite(latent).all()
    decoded = nodes.VAEDecode().decode(vae, {"samples": latent})[0]
    assert decoded.shape == (1, 64, 96, 3)
    assert decoded.min() >= 0 and decoded.max() <= 1 and decoded.std() > 0


@pytest.mark.parametrize("sigma", [14.6, 1.0, 0.03])
def test_outputs_finite_and_varied(tiny, sigma):
    """The predicted noise is O(1), depends on the prompt and varies over the image."""
    family, model, clip, _ = tiny
    x = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(0)) * sigma
    eps = [(x - denoise(model, encode(clip, text), x, sigma)) / sigma for text in ("", "a photo of a cat")]
    for e in eps:
        assert torch.isfinite(e).all() and 0.1 < e.std() < 10
    diff = (eps[1] - eps[0]).abs().sum(1)
    assert diff.mean() > 1e-3 * eps[0].abs().mean() and diff.std() > 0.1 * diff.mean()


def denoise(model, conditioning, x, sigma):
    """One model call through the host's sampling path; returns the denoised prediction."""
    import comfy.samplers

    captured = {}

    def sampler_fn(model_k, noise, sigmas, extra_args=None, callback=None, disable=None):
        captured["denoised"] = model_k(x, sigmas[:1], **extra_args)
        return noise

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)
    sigmas = torch.tensor([sigma, 0.0])
    guider.sample(torch.zeros_like(x), torch.zeros_like(x), comfy.samplers.KSAMPLER(sampler_fn), sigmas)
    return captured["denoised"]


def test_attn2_replace_keys_at_quarter_resolution(tiny):
    """Attention replaces registered per block see the expected layers at 1/4 of the latent size;
    the third element of a replace key is ``extra_options["block_index"]`` (depth within the block)."""
    from comfy.ldm.modules.attention import optimized_attention

    family, model, clip, _ = tiny
    calls = []

    def replace(q, k, v, extra_options):
        calls.append(dict(extra_options))
        return optimized_attention(q, k, v, extra_options["n_heads"])

    patched = model.clone()
    for block_name, count in (("input", 12), ("middle", 1), ("output", 12)):
        for number in range(count):
            patched.set_model_attn2_replace(replace, block_name, number)
    ksample(patched, clip, torch.zeros(1, 4, 32, 48), seed=0, steps=1)
    quarter = {}
    for extra in calls:
        assert list(extra["original_shape"]) == [2, 4, 32, 48] and sorted(extra["cond_or_uncond"]) == [0, 1]
        if list(extra["activations_shape"][-2:]) == [8, 12]:
            quarter.setdefault(tuple(extra["block"]), set()).add(extra["block_index"])
    expected = dict(QUARTER_RES_KEYS[family])
    if family == "sdxl":  # SDXL's middle block also runs at 1/4 (LEDITS++ leaves it out of M1)
        expected[("middle", 0)] = 1
    assert {key: len(indices) for key, indices in quarter.items()} == expected
    assert "patches_replace" not in model.model_options.get("transformer_options", {})


def txt2img_prompt(ckpt_name="any.safetensors", width=96, height=64, steps=2):
    """A minimal API-format text-to-image prompt, as the web UI would queue it."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a cat"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
            "seed": 3, "steps": steps, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }


def test_run_prompt_with_random_checkpoint(host, server):
    outputs = host.run_prompt(host.with_random_checkpoints(txt2img_prompt(), family="sd15"))
    image = outputs["decode"][0]
    assert image.shape == (1, 64, 96, 3) and torch.isfinite(image).all()
    assert outputs["sample"][0]["samples"].shape == (1, 4, 8, 12)
    assert [m["value"] for m in server.events("progress") if m["node"] == "sample"] == [1, 2]


@pytest.mark.skipif(not os.environ.get("LEDITS_SLOW_TESTS"),
                    reason="writes and loads a 0.6 GB checkpoint file; set LEDITS_SLOW_TESTS=1 to run")
def test_random_checkpoint_file_loads_as_sd15(host, random_models, tmp_path):
    """The host's own CheckpointLoaderSimple detects our single-file checkpoint as SD1.5."""
    import comfy.model_sampling
    import folder_paths

    random_models.save_random_checkpoint(tmp_path / "random_sd15.safetensors", "sd15", seed=0, size="slim")
    folder_paths.add_model_folder_path("checkpoints", str(tmp_path))
    outputs = host.run_prompt(txt2img_prompt("random_sd15.safetensors", 64, 64, steps=1))
    model = outputs["ckpt"][0]
    assert type(model.model.model_config).__name__ == "SD15"
    assert isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.EPS)
    assert torch.isfinite(outputs["decode"][0]).all()


def test_run_prompt_reports_host_errors(host):
    prompt = {"empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64}}}
    with pytest.raises(host.HostPromptError, match="batch_size"):
        host.run_prompt(prompt, outputs=["empty"])
    broken = {"decode": {"class_type": "VAEDecode", "inputs": {"samples": ["empty", 0], "vae": ["empty", 0]}},
              "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    with pytest.raises(host.HostPromptError):
        host.run_prompt(broken, outputs=["decode"])
