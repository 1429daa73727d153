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


@pytest.fixture(scope="session")
def toy():
    """(pack, MODEL, CLIP, VAE) of the committed toy model, through the host (float32)."""
    hostenv.import_host()
    import toy_eval

    pack = toy_eval.Pack.load()
    model, clip, vae = hostenv.import_pack_module("nodes.toy_model").load_toy_model()
    return pack, model, clip, vae
