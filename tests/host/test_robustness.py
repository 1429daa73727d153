"""Robustness on the real host: bad input, interruption, dtypes, shared models, long runs, frozen ids."""

import json
import os
from pathlib import Path

import psutil
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4


@pytest.fixture(scope="module")
def pack(host, random_models):
    """The pack's node modules (as the host loaded them) and ``random_models`` (scripts/, not the pack)."""
    host.load_pack()
    names = ["inversion_node", "concept_node", "sampler_nodes", "guider", "host_model"]
    return {**{n: host.import_pack_module(f"nodes.{n}") for n in names}, "random_models": random_models}


@pytest.fixture(scope="module")
def sd15(pack):
    return pack["random_models"].build_random_model("sd15", "tiny", seed=0)


def latent(batch=1, h=12, w=20, seed=0):
    return torch.randn((batch, 4, h, w), generator=torch.Generator().manual_seed(seed)) * 0.8


def invert(pack, model, clip, x, steps=STEPS, skip=0.15, **kw):
    return pack["inversion_node"].invert_latent(model, clip, {"samples": x}, steps, skip, "dpmpp_2m_sde", "karras",
                                                3, **kw)


def concept(pack, clip, text="sunglasses", **kw):
    args = dict(scale=5.0, threshold=0.9, reverse=False, warmup=0.0, cooldown=1.0)
    args.update(kw)
    return pack["concept_node"].make_concept(clip, text, **args)


def model_state(model):
    return repr(model.model_options), dict(model.patches), model.patches_uuid


# --- bad input: one clear error, before any work -------------------------------------------------------------


@pytest.mark.parametrize("steps, skip, match", [(0, 0.15, "steps must be at least 1"), (4, 1.0, "skip must be in"),
                                                (4, -0.1, "skip must be in")])
def test_bad_steps_and_skip(pack, sd15, steps, skip, match):
    model, clip, _ = sd15
    before = model_state(model)
    with pytest.raises(ValueError, match=match):
        invert(pack, model, clip, latent(), steps=steps, skip=skip)
    assert model_state(model) == before


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_concept_prompt(pack, sd15, text):
    with pytest.raises(ValueError, match="prompt is empty"):
        concept(pack, sd15[1], text)


@pytest.mark.parametrize("threshold", [-0.01, 1.01])
def test_threshold_outside_unit_interval(pack, sd15, threshold):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        concept(pack, sd15[1], threshold=threshold)


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_threshold_edges_run(pack, sd15, threshold):
    model, clip, _ = sd15
    inv = invert(pack, model, clip, latent())
    _, masks = pack["sampler_nodes"].run_edit(model, inv, (concept(pack, clip, threshold=threshold),), "noise")
    final = masks.per_step[0][0].final
    assert final.all() if threshold == 0 else final.sum() >= 1 and not final.all()


def test_user_mask_of_another_size_is_resized_and_batch_mismatch_is_refused(pack, sd15):
    model, clip, _ = sd15
    inv = invert(pack, model, clip, latent(batch=2))
    odd = torch.ones((1, 37, 53))
    out, _ = pack["sampler_nodes"].run_edit(model, inv, (concept(pack, clip, mask=odd),))
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="mask has 3 frames but the image batch has 2"):
        pack["sampler_nodes"].run_edit(model, inv, (concept(pack, clip, mask=torch.ones((3, 16, 16))),))


def test_latent_not_divisible_by_four_keeps_the_attention_mask(pack, sd15, caplog):
    model, clip, _ = sd15
    x = latent(h=65, w=65)  # a 520x520 image
    inv = invert(pack, model, clip, x, steps=2)
    out, masks = pack["sampler_nodes"].run_edit(model, inv, None)
    assert (out - x).abs().max() <= 1e-4
    _, masks = pack["sampler_nodes"].run_edit(model, inv, (concept(pack, clip),))
    assert all(per[0].attention is not None and per[0].attention.shape[-2:] == (65, 65)
               for per in masks.per_step.values())
    assert "falls back" not in caplog.text


def test_zero_and_sixteen_concepts(pack, sd15):
    model, clip, _ = sd15
    x = latent()
    inv = invert(pack, model, clip, x, steps=2)
    out, masks = pack["sampler_nodes"].run_edit(model, inv, ())
    assert (out - x).abs().max() <= 1e-4 and masks.labels == []
    many = tuple(concept(pack, clip, f"thing number {i}", scale=1.0 + i % 3) for i in range(16))
    out, masks = pack["sampler_nodes"].run_edit(model, inv, many)
    assert len(masks.labels) == 16 and sorted(masks.per_step[0]) == list(range(16)) and torch.isfinite(out).all()


# --- nothing leaked or changed ----------------------------------------------------------------------------------


def test_interrupted_run_leaves_the_model_alone_and_the_next_run_is_identical(pack, sd15):
    import comfy.model_management as mm

    model, clip, _ = sd15
    before = model_state(model)
    inv = invert(pack, model, clip, latent())
    concepts = (concept(pack, clip), concept(pack, clip, "hat", reverse=True))
    reference, _ = pack["sampler_nodes"].run_edit(model, inv, concepts)
    guider_module = pack["guider"]
    original = guider_module.LeditsGuider.predict_noise
    calls = []

    def interrupting(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            mm.interrupt_current_processing(True)
        return original(self, *args, **kwargs)

    guider_module.LeditsGuider.predict_noise = interrupting
    try:
        with pytest.raises(mm.InterruptProcessingException):
            pack["sampler_nodes"].run_edit(model, inv, concepts)
    finally:
        guider_module.LeditsGuider.predict_noise = original
        mm.interrupt_current_processing(False)
    assert model_state(model) == before
    again, _ = pack["sampler_nodes"].run_edit(model, inv, concepts)
    assert torch.equal(again, reference)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_run(pack, dtype):
    model, clip, _ = pack["random_models"].build_random_model("sd15", "tiny", seed=0, dtype=dtype)
    assert model.model_dtype() == dtype
    x = latent()
    inv = invert(pack, model, clip, x)
    out, _ = pack["sampler_nodes"].run_edit(model, inv, None)
    assert (out - x).abs().max() <= 1e-4
    out, masks = pack["sampler_nodes"].run_edit(model, inv, (concept(pack, clip),))
    assert torch.isfinite(out).all() and masks.per_step[0][0].final.dtype == torch.bool
    if torch.cuda.is_available():  # on a GPU machine the same runs on CUDA in half precision
        assert out.device.type == "cpu"


def shared_graph(scale_a=5.0, scale_b=3.0, with_a=True, with_b=True, with_k=True):
    """One MODEL feeding two LEDITS samplers and a plain KSampler (random tiny SD1.5 checkpoint)."""
    p = {"ckpt": {"class_type": "LeditsTestRandomCheckpoint", "inputs": {"family": "sd15", "size": "tiny", "seed": 0}},
         "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 96, "height": 160, "batch_size": 1}},
         "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a photo"}},
         "src": {"class_type": "KSampler", "inputs": {"model": ["ckpt", 0], "seed": 1, "steps": 2, "cfg": 3.0,
                                                       "sampler_name": "euler", "scheduler": "normal",
                                                       "positive": ["pos", 0], "negative": ["pos", 0],
                                                       "latent_image": ["empty", 0], "denoise": 1.0}},
         "inv": {"class_type": "LeditsInversion", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                                                             "latent": ["src", 0], "steps": 3, "skip": 0.15,
                                                             "sampler": "dpmpp_2m_sde", "scheduler": "karras",
                                                             "seed": 0, "source_scale": 3.5}}}
    for name, text, scale, on in (("a", "sunglasses", scale_a, with_a), ("b", "beard", scale_b, with_b)):
        if on:
            p[f"c{name}"] = {"class_type": "LeditsConceptEdit", "inputs": {
                "clip": ["ckpt", 1], "text": text, "scale": scale, "threshold": 0.9, "reverse": name == "b",
                "warmup": 0.0, "cooldown": 1.0}}
            p[f"s{name}"] = {"class_type": "LeditsSampler", "inputs": {
                "model": ["ckpt", 0], "inversion": ["inv", 0], "concepts": [f"c{name}", 0], "mask_mode": "intersect"}}
    if with_k:
        p["k"] = {"class_type": "KSampler", "inputs": dict(p["src"]["inputs"], seed=7)}
    return p


def test_two_ledits_samplers_and_a_ksampler_share_one_model(host):
    host.load_pack()
    both = host.run_prompt(shared_graph(), outputs=["sa", "sb", "k"])
    alone_a = host.run_prompt(shared_graph(with_b=False, with_k=False), outputs=["sa"])
    alone_b = host.run_prompt(shared_graph(with_a=False, with_k=False), outputs=["sb"])
    alone_k = host.run_prompt(shared_graph(with_a=False, with_b=False), outputs=["k"])
    assert torch.equal(both["sa"][0]["samples"], alone_a["sa"][0]["samples"])
    assert torch.equal(both["sb"][0]["samples"], alone_b["sb"][0]["samples"])
    assert torch.equal(both["k"][0]["samples"], alone_k["k"][0]["samples"])


def test_lora_patched_model_works(pack, sd15):
    model, clip, _ = sd15
    patched = model.clone()
    keys = [k for k in model.model_state_dict() if k.endswith("attn2.to_k.weight")][:4]
    gen = torch.Generator().manual_seed(0)
    patched.add_patches({k: (torch.randn(model.model_state_dict()[k].shape, generator=gen) * 0.05,) for k in keys})
    x = latent()
    inv = invert(pack, patched, clip, x)
    out, _ = pack["sampler_nodes"].run_edit(patched, inv, None)
    assert (out - x).abs().max() <= 1e-4
    edited, _ = pack["sampler_nodes"].run_edit(patched, inv, (concept(pack, clip),))
    plain_inv = invert(pack, model, clip, x)
    plain, _ = pack["sampler_nodes"].run_edit(model, plain_inv, (concept(pack, clip),))
    assert not torch.equal(edited, plain)  # the LoRA took part
    assert patched.patches and not model.patches


def test_another_packs_attn2_patch_is_chained_not_replaced(pack, sd15):
    from comfy.ldm.modules.attention import optimized_attention

    model, clip, _ = sd15
    calls = {"block": 0, "indexed": 0}

    def other_pack(counter):
        def fn(q, k, v, extra_options):
            calls[counter] += 1
            return optimized_attention(q, k, v, extra_options["n_heads"]) * 1.0
        return fn

    other = model.clone()
    other.set_model_attn2_replace(other_pack("block"), "input", 7)
    other.set_model_attn2_replace(other_pack("indexed"), "output", 3, 0)
    inv = invert(pack, other, clip, latent())
    calls.update(block=0, indexed=0)
    _, masks = pack["sampler_nodes"].run_edit(other, inv, (concept(pack, clip),))
    assert calls["block"] >= STEPS and calls["indexed"] >= STEPS
    assert all(per[0].attention is not None for per in masks.per_step.values())
    patches = other.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(patches) == {("input", 7), ("output", 3, 0)}  # still theirs, untouched


def test_non_square_sdxl_size_conditioning(pack):
    model, clip, _ = pack["random_models"].build_random_model("sdxl", "tiny", seed=0)
    x = latent(h=12, w=20)  # 96 px high, 160 px wide
    inv = invert(pack, model, clip, x, steps=2)
    guider = pack["guider"].edit_guider(model, inv, [concept(pack, clip)], "intersect")
    for name, conds in guider.original_conds.items():
        for cond in conds:
            assert (cond["width"], cond["height"]) == (160, 96), name
            assert (cond["target_width"], cond["target_height"]) == (160, 96), name
    adm = model.model.encode_adm(pooled_output=torch.zeros((1, 128)), width=160, height=96)
    swapped = model.model.encode_adm(pooled_output=torch.zeros((1, 128)), width=96, height=160)
    assert not torch.equal(adm, swapped)  # the order matters, and we pass width as width


def test_long_run_memory_is_flat(host):
    import comfy.model_management as mm

    host.load_pack()
    executor = host.new_executor()
    process = psutil.Process(os.getpid())
    rss, loaded = [], []
    for i in range(100):
        host.run_prompt(shared_graph(scale_a=1.0 + (i % 50) * 0.1, with_b=False, with_k=False), outputs=["sa"],
                        executor=executor)
        rss.append(process.memory_info().rss)
        loaded.append(len(mm.current_loaded_models))
    growth = (rss[-1] - rss[9]) / rss[9]
    print(f"[long run] RSS after 10 edits {rss[9] / 2**20:.0f} MiB, after 100 {rss[-1] / 2**20:.0f} MiB "
          f"({growth * 100:+.2f}%), loaded models {loaded[9]} -> {loaded[-1]}")
    assert growth < 0.05 and loaded[-1] <= loaded[9]


# --- frozen ids ----------------------------------------------------------------------------------------------


def current_schema(nodes):
    ours = ["LeditsInversion", "LeditsConceptEdit", "LeditsSampler", "LeditsGuider", "LeditsMaskPreview"]
    schema = {}
    for node_id in ours:
        spec = nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
        schema[node_id] = {section: list(spec.get(section, {})) for section in ("required", "optional")}
    return schema


def test_node_ids_and_input_names_are_frozen(host):
    host.load_pack()
    frozen = json.loads((ROOT / "tests" / "data" / "schema_v0_1_0.json").read_text())
    now = current_schema(host.import_host())
    for node_id, sections in frozen.items():
        assert node_id in now, f"node id {node_id} was removed or renamed"
        for section, names in sections.items():
            assert now[node_id][section][: len(names)] == names, f"{node_id}.{section} inputs changed: {names}"


def test_workflow_saved_by_an_earlier_version_still_runs(host):
    import shutil
    import sys

    import folder_paths

    host.load_builtin_extras()
    host.load_pack()
    sys.path.insert(0, str(ROOT / "scripts"))
    from workflow_api import ui_to_api

    workflow = json.loads((ROOT / "tests" / "data" / "workflow_saved_v0_1_0.json").read_text())
    prompt = host.with_random_checkpoints(ui_to_api(workflow, host.import_host().NODE_CLASS_MAPPINGS))
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            shutil.copy(ROOT / "assets" / "ledits_sample.png", Path(folder_paths.get_input_directory()))
        if node["class_type"] == "LeditsInversion":
            node["inputs"]["steps"] = 2
    host.run_prompt(prompt)
