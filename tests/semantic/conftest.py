"""Semantic tests: LEDITS++ edits on the small model trained on the toy world (scripts/train_toy.py).

They run through the real host like tests/host/ (found by scripts/hostenv.py: ``$COMFYUI_PATH``, else
``~/ComfyUI``, else ``../shared/ComfyUI``). Without a host they are skipped with the reason; with the
environment variable ``CI`` set, a missing host stops the run instead.
"""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.append(str(SCRIPTS))

import hostenv  # noqa: E402


def pytest_collection_modifyitems(config, items):
    hostenv.require_host_for(items, HERE, "the semantic tests")


@pytest.fixture(scope="session", params=["sd15", "sd3"])
def toy(request):
    """(pack, MODEL, CLIP, VAE, kind) of a committed toy model through the host (float32): "sd15" the toy UNet,
    "sd3" the toy flow transformer (the host's SD3 MMDiT)."""
    hostenv.import_host()
    import toy_eval

    pack = toy_eval.Pack.load()
    model, clip, vae = toy_eval.load(request.param)
    return pack, model, clip, vae, request.param
