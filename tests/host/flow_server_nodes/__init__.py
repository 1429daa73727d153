"""Test-only nodes for tests/host/test_flow_server.py, linked into the scratch server's custom_nodes beside the pack.

The real text encoders of SD3 and Flux (CLIP-L/G, T5-XXL) are gigabytes and their loaders take only the
published sizes, so the server gets its CLIP here: the tiny encoder of the family's layout from
tests/flow_models.py (the host's real tokenizers), matched to the tiny diffusion-model file the test writes for
the host's own UNETLoader. The photo's latent is a fixed random one (no 16-channel VAE needed).
"""

import importlib.util
from pathlib import Path

import torch

_FLOW_MODELS = Path(__file__).resolve().parents[2] / "flow_models.py"
_RANDOM_MODELS = Path(__file__).resolve().parents[3] / "scripts" / "random_models.py"
_CLIPS = {}


def _flow():
    spec = importlib.util.spec_from_file_location("ledits_test_flow_models_server", _FLOW_MODELS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LeditsTestTinyFlowClip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (["sd35m", "flux_dev", "flux_schnell"],), "seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "build"
    CATEGORY = "LEDITS++ tests"

    def build(self, family, seed):
        key = (family, seed)
        if key not in _CLIPS:
            _CLIPS[key] = _flow().build_clip(family, seed=seed)
        return (_CLIPS[key],)


class LeditsTestTinyFlowCheckpoint:
    """Stands in for an SD3.5 / Flux.1 checkpoint in the example workflows' headless runs: the tiny model of the
    family (host classes), its tiny CLIP and a tiny random 16-channel VAE."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (["sd35m", "flux_dev", "flux_schnell"],), "seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "LEDITS++ tests"

    def load(self, family, seed):
        flow = _flow()
        spec = importlib.util.spec_from_file_location("ledits_test_random_models", _RANDOM_MODELS)
        random_models = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(random_models)
        model = flow.build_model(family, "tiny", seed=seed, text_dims=flow.tiny_clip_text_dims(family))
        clip = LeditsTestTinyFlowClip().build(family, seed)[0]
        return model, clip, random_models.build_vae("tiny", seed, channels=16)


class LeditsTestPhotoLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"batch": ("INT", {"default": 1, "min": 1}), "height": ("INT", {"default": 12}),
                             "width": ("INT", {"default": 20}), "seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "LEDITS++ tests"

    def make(self, batch, height, width, seed):
        return ({"samples": photo_latent(batch, height, width, seed)},)


def photo_latent(batch, height, width, seed):
    """A stand-in for an encoded photo: 16 channels (SD3 and Flux latents)."""
    return torch.randn((batch, 16, height, width), generator=torch.Generator().manual_seed(int(seed)))


NODE_CLASS_MAPPINGS = {"LeditsTestTinyFlowClip": LeditsTestTinyFlowClip, "LeditsTestPhotoLatent": LeditsTestPhotoLatent,
                       "LeditsTestTinyFlowCheckpoint": LeditsTestTinyFlowCheckpoint}
