"""Import the real ComfyUI host in-process and drive it (host tests, benchmarks, help pictures, toy tools).

* The host is looked for at ``$COMFYUI_PATH`` when it is set (and only there), else at ``~/ComfyUI``,
  else in ``../shared/`` next to this repository: ``ComfyUI-0.33.0`` (today's host), then ``ComfyUI``
  (0.3.64, the oldest supported), read-only copies of the host's source that development machines
  and CI have (see docs/DESIGN.md, "Running the real host").
  ``host_missing_reason()`` says why none can be used (the host tests' conftest turns that into a
  skip, or into a failure when ``CI`` is set).
* ``import_host()`` imports it the way its ``main.py`` does, with the command-line arguments in
  ``COMFYUI_TEST_ARGS`` (default ``--cpu --use-pytorch-cross-attention``, as the server tests start the host; ``COMFYUI_TEST_THREADS=n`` caps torch's CPU threads,
  much faster on a busy machine), input/output/temp/user folders in a scratch directory and
  bytecode caches outside the host folder (the host folder is never written), a recording
  stand-in for the web server, and a test-only node that builds random-weight checkpoints
  (``RANDOM_LOADER``, from ``scripts/random_models.py``).
* ``load_pack()`` loads this repository as the host loads a custom node folder.
* ``run_prompt()`` validates and executes an API-format prompt with the host's executor.

Nothing here imports the host at import time.
"""

import asyncio
import atexit
import contextlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
# The read-only copies next to the repository, newest first: today's host, then the oldest supported one.
SHARED_HOSTS = (PACK_ROOT.parent / "shared" / "ComfyUI-0.33.0", PACK_ROOT.parent / "shared" / "ComfyUI")
# --use-pytorch-cross-attention: the fastest attention on CPU (the semantic tests ~25 % faster than sub-quadratic)
DEFAULT_HOST_ARGS = "--cpu --use-pytorch-cross-attention"
RANDOM_LOADER = "LeditsTestRandomCheckpoint"
HOST_VERSION = "0.3.64"  # the oldest host version the pack supports (tested with it and with 0.33.0)

# Top-level names that must resolve to the host's modules (our pack has a ``nodes/`` folder).
_HOST_MODULES = ("nodes", "execution", "server", "folder_paths", "comfy", "utils")


def host_candidates():
    """Where the host is looked for, in order, as ``(label, path)``: ``$COMFYUI_PATH`` alone when it is
    set (an explicit choice is never silently replaced by another host), else ``~/ComfyUI`` and then
    the copies in ``../shared/`` next to this repository (today's host first)."""
    explicit = os.environ.get("COMFYUI_PATH")
    if explicit:
        return [("$COMFYUI_PATH", Path(explicit).expanduser().resolve())]
    return [("~/ComfyUI", (Path.home() / "ComfyUI").resolve())] + [
        (f"../shared/{path.name}", path.resolve()) for path in SHARED_HOSTS]


def host_version(path=None):
    """The host's version string from its ``comfyui_version.py`` (for reports only: code that must differ
    between hosts asks the host what it has, never this), or None when it has none."""
    path = Path(path) if path else host_path()
    text = (path / "comfyui_version.py").read_text() if (path / "comfyui_version.py").is_file() else ""
    found = re.search(r"__version__\s*=\s*[\"']([^\"']+)", text)
    return found.group(1) if found else None


def is_host(path):
    """Whether ``path`` looks like a ComfyUI checkout (its ``nodes.py`` and ``comfy/`` package)."""
    path = Path(path)
    return (path / "nodes.py").is_file() and (path / "comfy" / "model_management.py").is_file()


def find_host():
    """The first usable host of ``host_candidates()``, or None."""
    return next((path for _, path in host_candidates() if is_host(path)), None)


def host_path():
    """The host checkout in use (see ``host_candidates()``); RuntimeError when there is none."""
    path = find_host()
    if path is None:
        raise RuntimeError(host_missing_reason())
    return path


def host_missing_reason(purpose="run the host tests"):
    """None when a host is usable, else a sentence saying where it was looked for and what to do
    to ``purpose``."""
    if find_host() is not None:
        return None
    looked = " and ".join(f"{label} ({path})" for label, path in host_candidates())
    return (f"ComfyUI host not found at {looked}; set COMFYUI_PATH to a ComfyUI checkout "
            f"({HOST_VERSION} or later, see docs/DESIGN.md, 'Running the real host') to {purpose}")


def require_host_for(items, folder, what="the host tests"):
    """pytest collection hook body for a folder of host tests: without a host, skip its tests with the
    reason; with the environment variable ``CI`` set, stop the run instead (a missing host must not pass)."""
    import pytest

    reason = host_missing_reason()
    if reason is None:
        return
    folder = Path(folder).resolve()
    ours = [item for item in items if folder in Path(item.path).resolve().parents]
    if ours and os.environ.get("CI"):
        raise pytest.UsageError(f"CI is set and {what} cannot run: {reason}")
    for item in ours:
        item.add_marker(pytest.mark.skip(reason=reason))


class DummyServer:
    """Stands in for ``server.PromptServer``: records every message instead of sending it."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages = []

    def send_sync(self, event, data, sid=None):
        """Record ``(event, data)``."""
        self.messages.append((event, data))

    def send_progress_text(self, text, node_id, sid=None):
        """Record a progress text as a ``("progress_text", {...})`` message."""
        self.messages.append(("progress_text", {"text": text, "node": node_id}))

    def queue_updated(self):
        """Nothing to update: there is no queue."""

    def events(self, event):
        """The data of every recorded message of one event type."""
        return [data for name, data in self.messages if name == event]


SERVER = DummyServer()
_state = {"imported": False, "scratch": None}


def _parse_host_args():
    """Import ``comfy.cli_args`` with ``COMFYUI_TEST_ARGS`` as the host's command line."""
    import comfy.options

    host_args = shlex.split(os.environ.get("COMFYUI_TEST_ARGS", DEFAULT_HOST_ARGS))
    if "comfy.cli_args" in sys.modules:  # parsed before us (without arguments): at least honour --cpu
        if "--cpu" in host_args:
            if "comfy.model_management" in sys.modules:
                raise RuntimeError("comfy.model_management was imported before the test harness; cannot force --cpu")
            sys.modules["comfy.cli_args"].args.cpu = True
        return
    argv = sys.argv
    sys.argv = ["main.py", *host_args]
    comfy.options.enable_args_parsing(True)
    try:
        import comfy.cli_args  # noqa: F401
    finally:
        comfy.options.enable_args_parsing(False)
        sys.argv = argv


def _check_not_shadowed(path):
    """Fail loudly if a host top-level name was already imported from somewhere else."""
    for name in _HOST_MODULES:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) or str(next(iter(getattr(module, "__path__", [])), ""))
        if module is not None and not Path(origin).resolve().is_relative_to(path):
            raise RuntimeError(f"module {name!r} was imported from {origin} before the host; the host's "
                               f"own {name!r} is needed (never import the pack's 'nodes' folder as top-level)")


def _use_scratch_dirs():
    """Point the host's input/output/temp/user folders at a fresh scratch directory."""
    import folder_paths

    scratch = Path(tempfile.mkdtemp(prefix="comfy_host_test_"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    for kind in ("input", "output", "temp", "user"):
        (scratch / kind).mkdir()
        getattr(folder_paths, f"set_{kind}_directory")(str(scratch / kind))
    _state["scratch"] = scratch


def _bytecode_outside(path):
    """Keep Python's bytecode caches out of the host folder: with no cache prefix chosen by the user
    (``PYTHONPYCACHEPREFIX``), they go to ``$XDG_CACHE_HOME/ledits_pp/pycache`` (default ``~/.cache``)."""
    if sys.dont_write_bytecode or sys.pycache_prefix is not None:
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ledits_pp" / "pycache"
    if cache.resolve().is_relative_to(path):
        sys.dont_write_bytecode = True
        return
    sys.pycache_prefix = str(cache)


def _progress_hook(value, total, preview_image, prompt_id=None, node_id=None):
    """Like the hook ``main.py`` installs: check for interrupts, record a ``progress`` message."""
    import comfy.model_management
    from comfy_execution.progress import get_progress_state
    from comfy_execution.utils import get_executing_context

    context = get_executing_context()
    if context is not None:
        prompt_id = prompt_id or context.prompt_id
        node_id = node_id or context.node_id
    comfy.model_management.throw_exception_if_processing_interrupted()
    get_progress_state().update_progress(node_id, value, total, preview_image)
    SERVER.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id})


def import_host():
    """Import the host in-process (idempotent) and return its ``nodes`` module."""
    if _state["imported"]:
        return sys.modules["nodes"]
    path = host_path()
    _check_not_shadowed(path)
    _bytecode_outside(path)
    if os.environ.get("COMFYUI_TEST_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["COMFYUI_TEST_THREADS"]))
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))  # before the repo root: the host's 'nodes' must win
    _parse_host_args()
    import utils.extra_config  # noqa: F401  (main.py imports the 'utils' package before nodes.py)
    _use_scratch_dirs()
    import comfy.utils
    import execution  # noqa: F401
    import server

    nodes = importlib.import_module("nodes")  # the host's nodes.py (ruff takes 'nodes' for our folder)

    if getattr(server.PromptServer, "instance", None) is None:
        server.PromptServer.instance = SERVER
    comfy.utils.set_progress_bar_global_hook(_progress_hook)
    asyncio.run(nodes.init_public_apis())
    _state["imported"] = True
    nodes.NODE_CLASS_MAPPINGS[RANDOM_LOADER] = _random_loader_class()
    return nodes


def import_host_models():
    """Import only the host's model code (``comfy.*``: model classes, CLIP, VAE, model patcher; idempotent), without
    its server, nodes or samplers' node side: what the toy trainers need, so that they run where only the host's
    source and torch are (a lent GPU machine). ``import_pack_module`` then imports pack modules without the rest."""
    if _state["imported"] or _state.get("models"):
        return
    path = host_path()
    _check_not_shadowed(path)
    _bytecode_outside(path)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    _parse_host_args()
    import comfy.model_patcher  # noqa: F401
    import comfy.sd  # noqa: F401
    import comfy.supported_models  # noqa: F401

    _state["models"] = True


def load_builtin_extras():
    """Load the host's ``comfy_extras`` nodes (SamplerCustomAdvanced & co.), as ``main.py`` does."""
    nodes = import_host()
    if not _state.get("extras"):
        asyncio.run(nodes.init_builtin_extra_nodes())
        _state["extras"] = True


def pack_module_name(root=PACK_ROOT):
    """The ``sys.modules`` name the host gives a custom node folder: its path, '.' -> '_x_'."""
    return str(root).replace(".", "_x_")


def import_pack_module(relative_name, root=PACK_ROOT):
    """Import ``<pack>.<relative_name>`` (e.g. ``"nodes.guider"``) without running the
    pack's ``__init__.py`` when the pack is not loaded yet; same module objects as ``load_pack``."""
    if not _state.get("models"):
        import_host()
    name = pack_module_name(root)
    if name not in sys.modules:  # a bare package; load_pack() later replaces it, keeping submodules
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(root)]
        sys.modules[name] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"{name}.{relative_name}")


def import_random_models():
    """``scripts/random_models.py`` (random-weight models for tests, benchmarks and the demo; not part
    of the pack), with the host imported first (it builds the host's own model classes)."""
    import_host()
    if str(SCRIPTS) not in sys.path:
        sys.path.append(str(SCRIPTS))
    return importlib.import_module("random_models")


@contextlib.contextmanager
def _captured_logs():
    """Collect the host's log messages (it logs, rather than raises, custom node import errors)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger().removeHandler(handler)


def load_pack(root=PACK_ROOT):
    """Load the pack like ComfyUI loads ``custom_nodes/<pack>`` (V3: ``comfy_entrypoint``), register
    its nodes in ``nodes.NODE_CLASS_MAPPINGS`` and return the package module."""
    nodes = import_host()
    name = pack_module_name(root)
    if name in _state.setdefault("packs", set()):
        return sys.modules[name]
    if not (Path(root) / "__init__.py").is_file():
        raise FileNotFoundError(f"{root}/__init__.py does not exist: nothing to load")
    with _captured_logs() as logs:
        loaded = asyncio.run(nodes.load_custom_node(str(root), module_parent="custom_nodes"))
    if not loaded:
        raise RuntimeError("the host could not load the pack:\n" + "\n".join(logs))
    _state["packs"].add(name)
    return sys.modules[name]


class HostPromptError(RuntimeError):
    """A prompt failed validation or execution; the message is the host's."""


def _format_errors(node_errors):
    """The host's per-node validation errors as readable lines."""
    return "\n".join(f"  node {node_id} ({info['class_type']}): {e['message']}: {e['details']}"
                     for node_id, info in node_errors.items() for e in info["errors"])


def _validate(prompt, prompt_id, outputs):
    """Validate like the server does (but refuse partial success); return the node ids to execute."""
    import execution

    if outputs is None:
        ok, error, good_outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not ok or node_errors:
            message = f"{error['message']}: {error['details']}" if error else "some outputs failed validation"
            raise HostPromptError(f"{message}\n{_format_errors(node_errors)}")
        return good_outputs
    validated = {}
    for node_id in outputs:
        ok, reasons, _ = asyncio.run(execution.validate_inputs(prompt_id, prompt, node_id, validated))
        if not ok:
            errors = {n: {"class_type": prompt[n]["class_type"], "errors": r} for n, (v, r, _) in validated.items() if not v}
            raise HostPromptError(f"node {node_id} failed validation\n{_format_errors(errors)}")
    return list(outputs)


def _unwrap(node_class, slots):
    """One value per output slot (the executor stores a list per slot; lists stay lists)."""
    is_list = getattr(node_class, "OUTPUT_IS_LIST", None) or ()
    return tuple(v if (i < len(is_list) and is_list[i]) or len(v) != 1 else v[0] for i, v in enumerate(slots))


def new_executor():
    """A host ``PromptExecutor`` (classic cache) reporting to the recording server.

    Newer hosts (0.3x) take ``cache_args`` and read its ``ram`` and ``ram_inactive`` headroom on every
    run; older ones (0.3.64) have no such parameter. Which one this host is, its signature says.
    """
    import execution

    import_host()
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        return execution.PromptExecutor(SERVER, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    return execution.PromptExecutor(SERVER, cache_type=execution.CacheType.CLASSIC)


def cached_outputs(executor, node_id):
    """The output slots the executor's cache holds for ``node_id``, or None.

    What the cache is, the host says: 0.3.64's ``get`` returns the slots; newer hosts' ``get`` is a
    coroutine whose result is a ``CacheEntry`` with the slots in ``.outputs`` (and the node's UI beside).
    """
    found = executor.caches.outputs.get(node_id)
    if inspect.isawaitable(found):
        found = asyncio.run(found)
    return getattr(found, "outputs", found)


def run_prompt(prompt, outputs=None, executor=None, extra_data=None):
    """Validate and execute an API-format ``prompt`` in-process.

    ``outputs``: node ids to execute (any nodes, output nodes or not); default: the output nodes.
    ``executor``: reuse one from ``new_executor()`` to keep the host's cache between prompts.
    Returns ``{node_id: tuple of output values}`` for every node that ran or was cached;
    ``ui`` results are in ``executor.history_result``. Raises ``HostPromptError`` with the host's
    exception type, message and traceback when validation or execution fails.
    """
    nodes = import_host()
    prompt_id = str(uuid.uuid4())
    targets = _validate(prompt, prompt_id, outputs)
    executor = executor or new_executor()
    executor.execute(prompt, prompt_id, extra_data or {}, targets)
    if not executor.success:
        errors = [data for event, data in executor.status_messages if event == "execution_error"]
        detail = errors[-1] if errors else {}
        raise HostPromptError(
            f"node {detail.get('node_id')} ({detail.get('node_type')}) failed: "
            f"{detail.get('exception_type')}: {detail.get('exception_message')}\n"
            + "".join(detail.get("traceback", [])))
    results = {}
    for node_id, node in prompt.items():
        slots = cached_outputs(executor, node_id)
        if slots is not None:
            results[node_id] = _unwrap(nodes.NODE_CLASS_MAPPINGS[node["class_type"]], slots)
    return results


def with_random_checkpoints(prompt, family="sd15", size="tiny", seed=0):
    """A copy of ``prompt`` where every ``CheckpointLoaderSimple`` builds a random-weight model."""
    inputs = {"family": family, "size": size, "seed": seed}
    return {node_id: ({"class_type": RANDOM_LOADER, "inputs": dict(inputs)}
                      if node["class_type"] == "CheckpointLoaderSimple" else node)
            for node_id, node in prompt.items()}


def _random_loader_class():
    """The test-only loader node: (family, size, seed) -> random MODEL, CLIP, VAE."""
    random_models = import_random_models()

    class LeditsTestRandomCheckpoint:
        """Test only: a checkpoint loader that builds random weights (scripts/random_models.py)."""

        RETURN_TYPES = ("MODEL", "CLIP", "VAE")
        FUNCTION = "load"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {
                "family": (list(random_models.FAMILIES),),
                "size": (list(random_models.SIZES), {"default": "tiny"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
            }}

        def load(self, family, size, seed):
            import folder_paths

            return random_models.build_random_model(
                family, size, seed, embedding_directory=folder_paths.get_folder_paths("embeddings"))

    return LeditsTestRandomCheckpoint
