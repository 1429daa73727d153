"""The toy trainers' fine-tune with the phrase loss runs end to end on the host, for the UNet and the flow
transformer (a few steps on a few scenes, from the committed weights): export written, the probe's phrase figures
recorded, every tensor of the denoiser and the text encoder moved by the steps (the host builds its diffusion
models frozen since 0.33: a trainer that did not switch them back on trained only the text encoder), and a
fine-tune without its VAE refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))


# tensors no loss depends on: the text encoder's logit scale and projection (the UNet takes its hidden states
# only), and the query norm of the flow transformer's last text stream (its text output is dropped, the text
# keys and values alone reach the image)
UNUSED = ("logit_scale", "text_projection.weight", "joint_blocks.3.context_block.attn.ln_q.weight")


@pytest.mark.parametrize("script, weights, steps, probe_key, ckpt", [
    ("train_toy.py", "toy_sd15.safetensors", "--unet-steps", "ratio_phrase", "unet.pt"),
    ("train_toy_flow.py", "toy_sd3.safetensors", "--steps", "ratio_phrase_all", "dit.pt")])
def test_a_phrase_loss_fine_tune_runs(tmp_path, script, weights, steps, probe_key, ckpt):
    w = ROOT / "assets" / "toy" / weights
    out = tmp_path / "export.safetensors"
    extra = ["--x0-weight", 20] if script == "train_toy.py" else []
    done = run(script, "--work", tmp_path, "--out", out, "--vae-from", w, "--init-from", w, "--scenes", 24, steps, 2,
               "--probe-every", 2, "--ckpt-every", 1, "--attn-loss", 0.005, "--phrase-loss", 0.01, "--threads", 2,
               *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.exists() and out.stat().st_size > 1e6
    probes = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines() if '"probe"' in line]
    assert probes and probe_key in probes[-1] and probes[-1]["step"] == 2
    start = load_file(w)  # the weights it started from, against the last checkpoint (float32: the export's
    ck = torch.load(tmp_path / ckpt, weights_only=False)  # float16 rounds two Adam steps away near 1)
    state = {**{f"unet.{k}": v for k, v in ck[ckpt.split(".")[0]].items()},
             **{f"te.clip_l.{k}": v for k, v in ck["te"].items()}}
    compared = [k for k in state if k in start and not k.endswith(UNUSED)]
    assert len(compared) > 0.9 * len(state)
    still = [k for k in compared if torch.equal(start[k].float(), state[k].float())]
    assert not still, f"{len(still)} of {len(compared)} tensors unchanged by training, e.g. {still[:3]}"


def test_a_fine_tune_without_its_vae_is_refused(tmp_path):
    w = ROOT / "assets" / "toy" / "toy_sd3.safetensors"
    done = run("train_toy_flow.py", "--work", tmp_path, "--init-from", w, "--steps", 1)
    assert done.returncode != 0 and "needs --vae-from" in done.stderr
    assert not (tmp_path / "vae.pt").exists()


@pytest.mark.parametrize("script, weights, steps", [("train_toy.py", "toy_sd15.safetensors", "--unet-steps"),
                                                    ("train_toy_flow.py", "toy_sd3.safetensors", "--steps")])
def test_a_pairs_fine_tune_encodes_its_pairs_and_trains(tmp_path, script, weights, steps):
    w = ROOT / "assets" / "toy" / weights
    common = ["--vae-from", w, "--init-from", w, "--scenes", 24, "--threads", 2, "--probe-every", 100]
    plain = tmp_path / "plain"  # a work folder encoded without pairs is refused, not trained as a control
    for stage in ("vae", "encode"):
        assert run(script, "--work", plain, *common, "--stage", stage).returncode == 0
    for flag, name in (("--edit-pairs", "edit"), ("--removal-pairs", "removal")):
        refused = run(script, "--work", plain, *common, steps, 1, flag, 0.5, "--stage", "unet" if
                      script == "train_toy.py" else "dit")
        assert refused.returncode != 0 and f"encoded without {name} pairs" in refused.stderr
    refused = run(script, "--work", plain, *common, steps, 1, "--caption-edits", 0.5)
    assert refused.returncode != 0 and "give --edit-pairs too" in refused.stderr
    done = run(script, "--work", tmp_path / "pairs", *common, steps, 2, "--edit-pairs", 0.5, "--removal-pairs", 0.5,
               "--caption-edits", 0.5, "--attn-loss", 0.005, "--out", tmp_path / "export.safetensors")
    assert done.returncode == 0, done.stderr[-3000:]
    data = torch.load(tmp_path / "pairs" / "latents.pt", weights_only=False)
    have = [i for i, v in enumerate(data["variants"]) if v is not None]
    assert len(data["variants"]) == 24 and len(have) > 12  # scenes whose objects share a shape have none
    lat, var = data["latents"].float(), data["latents_b"].float()
    assert var.shape == lat.shape and all((var[i] - lat[i]).abs().max() > 0.1 for i in have)  # encoded variants
    gone = data["latents_r"].float()  # every scene has a removal variant
    assert len(data["removals"]) == 24 and gone.shape == lat.shape
    assert all((gone[i] - lat[i]).abs().max() > 0.1 for i in range(24))
    assert (tmp_path / "export.safetensors").exists()
