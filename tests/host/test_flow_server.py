"""SD3.5-medium, Flux.1-dev and Flux.1-schnell through the real server (``python main.py``, HTTP API): the host's own
UNETLoader detects tiny random diffusion-model files written here, and the LEDITS++ nodes invert and edit with them.

The CLIP and the photo's latent come from test-only nodes (tests/host/flow_server_nodes): the published text
encoders cannot be made tiny for the host's loaders. A family whose tiny file this host cannot detect (0.3.64
reads every Flux file as 3072 wide) is skipped with that reason; its nodes run in-process in test_flow_nodes.py.
"""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
TEST_NODES = Path(__file__).resolve().parent / "flow_server_nodes"
FAMILIES = ["sd35m", "flux_dev", "flux_schnell"]
DETECTED = {"sd35m": "sd3", "flux_dev": "flux_dev", "flux_schnell": "flux_schnell"}
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(TEST_NODES.parent))

import comfy_client  # noqa: E402
from flow_server_nodes import photo_latent  # noqa: E402


def detectable(flow, family):
    """Whether this host's detection reads a tiny file of ``family`` back as the tiny model (asked, not assumed)."""
    dims = flow.tiny_clip_text_dims(family)
    detected, config = flow.detect(flow.shape_state_dict(family, "tiny", text_dims=dims))
    ours = flow.unet_config(family, "tiny", text_dims=dims)
    return detected == DETECTED[family] and {k: config.get(k) for k in ours} == ours


@pytest.fixture(scope="module")
def flow_server(host, flow, tmp_path_factory):
    """One server for the module, with a tiny diffusion-model file per family this host detects."""
    folder = tmp_path_factory.mktemp("flow_files")
    files = {}
    for family in FAMILIES:
        if detectable(flow, family):
            sd = flow.state_dict(family, "tiny", seed=0, text_dims=flow.tiny_clip_text_dims(family))
            files[family] = folder / f"ledits_tiny_{family}.safetensors"
            save_file({k: v.contiguous() for k, v in sd.items()}, str(files[family]))
    with comfy_client.LocalServer(host.host_path(), sys.executable, models={"diffusion_models": files.values()},
                                  custom_nodes=[TEST_NODES]) as server:
        server.files = files
        yield server


def edit_prompt(family, concepts=(), skip=0.15, sampler="dpmpp_2m_sde", mask_mode="intersect", source=None):
    """UNETLoader -> Inversion -> Sampler (concepts chained) -> SaveLatent, the photo saved too (API format)."""
    p = {
        "model": {"class_type": "UNETLoader", "inputs": {"unet_name": f"ledits_tiny_{family}.safetensors",
                                                          "weight_dtype": "default"}},
        "clip": {"class_type": "LeditsTestTinyFlowClip", "inputs": {"family": family, "seed": 0}},
        "photo": {"class_type": "LeditsTestPhotoLatent", "inputs": {"batch": 2, "height": 12, "width": 20, "seed": 1}},
        "inversion": {"class_type": "LeditsInversion", "inputs": {
            "model": ["model", 0], "clip": ["clip", 0], "latent": ["photo", 0], "steps": 5, "skip": skip,
            "sampler": sampler, "scheduler": "simple", "seed": 3, "source_scale": 3.5}},
        "sampler": {"class_type": "LeditsSampler", "inputs": {"model": ["model", 0], "inversion": ["inversion", 0],
                                                              "mask_mode": mask_mode}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": f"out_{family}"}},
    }
    if source is not None:
        p["source"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": source}}
        p["inversion"]["inputs"]["source"] = ["source", 0]
    previous = None
    for i, (text, scale, reverse) in enumerate(concepts):
        node = {"clip": ["clip", 0], "text": text, "scale": scale, "threshold": 0.9, "reverse": reverse,
                "warmup": 0.0, "cooldown": 1.0}
        if previous:
            node["previous"] = [previous, 0]
        previous = f"concept{i}"
        p[previous] = {"class_type": "LeditsConceptEdit", "inputs": node}
    if previous:
        p["sampler"]["inputs"]["concepts"] = [previous, 0]
        p["preview"] = {"class_type": "LeditsMaskPreview", "inputs": {"masks": ["sampler", 1], "which": "final",
                                                                        "start_step": 0, "end_step": -1}}
        p["show"] = {"class_type": "PreviewImage", "inputs": {"images": ["preview", 0]}}
    return p


def run(server, prompt):
    entry = comfy_client.ComfyClient(server.url, timeout=120).run(prompt)
    saved = entry["outputs"]["save"]["latents"][0]
    latent = load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]
    return latent, entry


def family_served(flow_server, family):
    if family not in flow_server.files:
        pytest.skip(f"this host's detection does not read a tiny {family} file back as tiny (0.3.64 takes every "
                    "Flux file for 3072 wide): its nodes are tested in-process (test_flow_nodes.py)")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sampler,skip,source", [("dpmpp_2m_sde", 0.0, None), ("ddpm", 0.5, None),
                                                 ("dpmpp_2m_sde", 0.15, "a photo of a face")])
def test_reconstruction_through_the_server(flow_server, family, sampler, skip, source):
    """No concept: the photo back (float32, batch 2, a 12x20 latent), from the host-detected file."""
    family_served(flow_server, family)
    out, _ = run(flow_server, edit_prompt(family, skip=skip, sampler=sampler, source=source))
    photo = photo_latent(2, 12, 20, 1)
    err = (out - photo).abs().max().item()
    print(f"[server reconstruction] {family} {sampler} skip {skip} source {source is not None}: {err:.3g}")
    assert out.shape == photo.shape and err <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_an_edit_with_masks_through_the_server(flow_server, family):
    """Two concepts (one removed) with masks from joint attention and the noise: the latent changes, stays finite,
    and the Mask Preview shows the run; no fallback warning, since joint attention was captured."""
    family_served(flow_server, family)
    out, entry = run(flow_server, edit_prompt(family, [("sunglasses", 6.0, False), ("beard", 4.0, True)]))
    photo = photo_latent(2, 12, 20, 1)
    assert torch.isfinite(out).all() and (out - photo).abs().max().item() > 1e-2
    assert entry["outputs"]["show"]["images"], "the Mask Preview showed its panels"
    assert "falls back to" not in flow_server.log_tail(20_000).lower()
