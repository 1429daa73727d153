"""The toy trainers' fine-tune with the phrase loss runs end to end on the host, for the UNet and the flow
transformer (a few steps on a few scenes, from the committed weights): export written, the probe's phrase figures
recorded, and a fine-tune without its VAE refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))


@pytest.mark.parametrize("script, weights, steps, probe_key", [
    ("train_toy.py", "toy_sd15.safetensors", "--unet-steps", "ratio_phrase"),
    ("train_toy_flow.py", "toy_sd3.safetensors", "--steps", "ratio_phrase_all")])
def test_a_phrase_loss_fine_tune_runs(tmp_path, script, weights, steps, probe_key):
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


def test_a_fine_tune_without_its_vae_is_refused(tmp_path):
    w = ROOT / "assets" / "toy" / "toy_sd3.safetensors"
    done = run("train_toy_flow.py", "--work", tmp_path, "--init-from", w, "--steps", 1)
    assert done.returncode != 0 and "needs --vae-from" in done.stderr
    assert not (tmp_path / "vae.pt").exists()
