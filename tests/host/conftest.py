"""Host test harness: tests in this folder run against the real ComfyUI host, in-process.

The host is looked for at ``$COMFYUI_PATH``, else ``~/ComfyUI``, else ``../shared/ComfyUI`` next to
the repository (``scripts/hostenv.py``). Without one every test here is skipped, with the reason in
the summary; when the environment variable ``CI`` is set, a missing host is an error instead (the
run stops before any test). Test modules import ``hostenv`` (``scripts/hostenv.py``; ``scripts/`` is
put on ``sys.path``) and must not import the host at module level: use the ``host`` fixture.
"""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.append(str(SCRIPTS))

import hostenv  # noqa: E402


def pytest_report_header(config):
    """Say which host the host tests use, or why they are skipped."""
    reason = hostenv.host_missing_reason()
    return f"ComfyUI host: {reason}" if reason else f"ComfyUI host: {hostenv.host_path()}"


def pytest_collection_modifyitems(config, items):
    """Skip every test of this folder, loudly, when the host is missing; with ``CI`` set, fail instead."""
    hostenv.require_host_for(items, HERE)


@pytest.fixture(scope="session")
def host():
    """The ``hostenv`` module, with the host imported (CPU unless ``COMFYUI_TEST_ARGS`` says so)."""
    hostenv.import_host()
    return hostenv


@pytest.fixture(scope="session")
def random_models(host):
    """``scripts/random_models.py``: random-weight models built from the host's classes."""
    return host.import_random_models()


@pytest.fixture(scope="session")
def flow(host):
    """``tests/flow_models.py`` (random flow transformers of the host's classes, tiny text encoders of their
    layouts), loaded by path after the host."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ledits_test_flow_models", HERE.parent / "flow_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def server(host):
    """The recording stand-in for the web server, emptied for this test."""
    host.SERVER.messages.clear()
    return host.SERVER


@pytest.fixture(scope="session")
def comfy_job_server():
    """The host's own server (``python main.py``, this Python) on 127.0.0.1 with this pack, for the headless
    job's tests (``scripts/comfy_client.py``: scratch base directory, stopped and removed at the end)."""
    import comfy_client

    with comfy_client.LocalServer(hostenv.host_path(), sys.executable) as server:
        yield server
