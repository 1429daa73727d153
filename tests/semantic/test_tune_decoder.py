"""scripts/tune_toy_decoder.py: a decoder fine-tune leaves the encoder (so every latent the denoiser was trained on)
bitwise as it was and moves the decoder, its record says so, a graft takes the decoder only and refuses a file with
another encoder, and the check's figures are what they say."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "assets" / "toy"


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "tune_toy_decoder.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))


def record(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["record"])


def test_a_decoder_tune_moves_the_decoder_only_and_a_graft_needs_the_same_encoder(tmp_path):
    w = TOY / "toy_sd15.safetensors"
    out = tmp_path / "tuned.safetensors"
    done = run("--weights", w, "--out", out, "--work", tmp_path / "work", "--steps", 2, "--ckpt-every", 1, "--lr", 0.01,
               "--scenes", 1, "--threads", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "other object kept with one drawn away" in done.stdout
    start, tuned = load_file(str(w)), load_file(str(out))
    assert set(start) == set(tuned)
    decoder = [k for k in start if k.startswith(("vae.decoder.", "vae.post_quant_conv."))]
    rest = [k for k in start if k not in decoder]
    assert decoder and all(torch.equal(start[k], tuned[k]) for k in rest)  # encoder, quant_conv, UNet, CLIP
    assert sum(not torch.equal(start[k], tuned[k]) for k in decoder) > 0.9 * len(decoder)
    rec = record(out)["decoder_tune"]
    assert rec["steps"] == 2 and rec["from"] == w.name and record(w).keys() <= record(out).keys()
    grafted = tmp_path / "grafted.safetensors"
    assert run("--weights", w, "--graft", out, "--out", grafted, "--scenes", 1).returncode == 0
    g = load_file(str(grafted))
    assert all(torch.equal(g[k], tuned[k]) for k in decoder) and all(torch.equal(g[k], start[k]) for k in rest)
    assert record(grafted)["decoder_tune"]["decoder_of"] == out.name
    refused = run("--weights", TOY / "toy_sd3.safetensors", "--model", "sd3", "--graft", out,
                  "--out", tmp_path / "no.safetensors")
    assert refused.returncode != 0 and "needs the same encoder" in refused.stderr
    assert not (tmp_path / "no.safetensors").exists()


def test_the_check_draws_one_object_away_and_measures_the_other():
    import hostenv

    hostenv.import_host()
    import toy_eval
    import toy_world
    import tune_toy_decoder

    hostenv.load_pack()
    scene = toy_world.test_scene(0, "val")
    gone = toy_world.without(scene, 1)
    changed = (gone.image != scene.image).any(-1)
    assert [o.words for o in gone.objects] == [scene.objects[0].words]
    assert changed.any() and not changed[~scene.objects[1].mask].any()
    _, _, vae = toy_eval.load("sd3")
    figs = tune_toy_decoder.check(vae, 2)
    assert {k: len(v) for k, v in figs.items()} == {"context": 4, "in_colour": 4, "rgb_error": 4}
    assert all(0 <= v <= 1 for v in figs["in_colour"]) and all(np.isfinite(figs["rgb_error"]))
    assert min(figs["context"]) > 0.9  # the flow transformer's VAE: 0.95 or more on scenes 0-9
