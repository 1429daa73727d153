"""The host harness itself: CPU import, scratch folders, custom-node loading, loud skipping."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FAKE_PACK = '''
"""A minimal V3 pack, as a custom node folder."""
from .impl import extension


async def comfy_entrypoint():
    return extension()
'''
FAKE_IMPL = '''
from comfy_api.latest import ComfyExtension, io


class HarnessAddOne(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="HarnessAddOne", inputs=[io.Int.Input("value")], outputs=[io.Int.Output()])

    @classmethod
    def execute(cls, value):
        return io.NodeOutput(value + 1)


class Extension(ComfyExtension):
    async def get_node_list(self):
        return [HarnessAddOne]


def extension():
    return Extension()
'''


def test_host_runs_on_cpu_with_scratch_folders(host):
    import comfy.model_management
    import folder_paths

    if "--cpu" in os.environ.get("COMFYUI_TEST_ARGS", host.DEFAULT_HOST_ARGS):
        assert comfy.model_management.get_torch_device().type == "cpu"
    for folder in (folder_paths.get_output_directory(), folder_paths.get_temp_directory()):
        assert not Path(folder).resolve().is_relative_to(host.host_path())
    assert Path(sys.modules["nodes"].__file__).parent == host.host_path()


def test_load_pack_like_a_custom_node(host, tmp_path):
    import nodes

    (tmp_path / "__init__.py").write_text(textwrap.dedent(FAKE_PACK))
    (tmp_path / "impl.py").write_text(textwrap.dedent(FAKE_IMPL))
    module = host.load_pack(tmp_path)
    assert module.__name__ == host.pack_module_name(tmp_path) and hasattr(module, "comfy_entrypoint")
    assert "HarnessAddOne" in nodes.NODE_CLASS_MAPPINGS
    prompt = {"add": {"class_type": "HarnessAddOne", "inputs": {"value": 41}}}
    assert host.run_prompt(prompt, outputs=["add"]) == {"add": (42,)}


def test_load_pack_reports_import_errors(host, tmp_path):
    (tmp_path / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    with pytest.raises(RuntimeError, match="broken on purpose"):
        host.load_pack(tmp_path)


def test_this_pack_loads(host):
    import nodes

    if not (host.PACK_ROOT / "__init__.py").is_file():
        pytest.skip("the pack has no __init__.py yet")
    module = host.load_pack()
    ours = [name for name, cls in nodes.NODE_CLASS_MAPPINGS.items()
            if getattr(cls, "RELATIVE_PYTHON_MODULE", "") == f"custom_nodes.{host.PACK_ROOT.name}"]
    assert hasattr(module, "comfy_entrypoint") and ours


def _pytest_without_host(ci):
    """pytest on one host test module with COMFYUI_PATH pointing nowhere (so no other host is tried)."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["COMFYUI_PATH"] = "/nonexistent/ComfyUI"
    if ci:
        env["CI"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "tests/host/test_random_models.py", "-q", "-p", "no:cacheprovider"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_without_host_every_host_test_is_skipped_with_the_reason():
    """A few seconds: a subprocess that collects but runs nothing."""
    result = _pytest_without_host(ci=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" not in result.stdout and " skipped" in result.stdout
    assert "SKIPPED" in result.stdout and "ComfyUI host not found at $COMFYUI_PATH (/nonexistent/ComfyUI)" in result.stdout


def test_without_host_in_ci_the_run_fails():
    """With CI set, a missing host is an error, not a green run of skips."""
    result = _pytest_without_host(ci=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "passed" not in output and "SKIPPED" not in output
    assert "CI is set and the host tests cannot run: ComfyUI host not found" in output


def test_host_lookup_order(host, monkeypatch, tmp_path):
    """$COMFYUI_PATH alone when set; else ~/ComfyUI, then ../shared/ComfyUI-0.33.0 (today's host) and
    ../shared/ComfyUI (the oldest supported) next to the repository."""
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    assert [label for label, _ in host.host_candidates()] == ["$COMFYUI_PATH"]
    assert host.find_host() is None and str(tmp_path) in host.host_missing_reason()
    monkeypatch.delenv("COMFYUI_PATH")
    monkeypatch.setenv("HOME", str(tmp_path))
    shared = (host.PACK_ROOT.parent / "shared").resolve()
    assert host.host_candidates() == [("~/ComfyUI", (tmp_path / "ComfyUI").resolve()),
                                      ("../shared/ComfyUI-0.33.0", shared / "ComfyUI-0.33.0"),
                                      ("../shared/ComfyUI", shared / "ComfyUI")]
    (tmp_path / "ComfyUI" / "comfy").mkdir(parents=True)
    (tmp_path / "ComfyUI" / "nodes.py").touch()
    (tmp_path / "ComfyUI" / "comfy" / "model_management.py").touch()
    assert host.find_host() == (tmp_path / "ComfyUI").resolve()


def test_executor_and_cache_as_the_host_has_them(host):
    """The in-process executor asks the host what it has: 0.3.64's PromptExecutor takes no cache_args and its
    output cache returns the slots; newer hosts need cache_args and return a CacheEntry from a coroutine."""
    import inspect

    import execution

    takes_cache_args = "cache_args" in inspect.signature(execution.PromptExecutor).parameters
    executor = host.new_executor()
    assert (executor.cache_args is not None) if takes_cache_args else not hasattr(executor, "cache_args")
    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}}}
    results = host.run_prompt(prompt, outputs=["1"], executor=executor)
    assert tuple(results["1"][0]["samples"].shape) == (1, 4, 6, 8)
    slots = host.cached_outputs(executor, "1")
    assert isinstance(slots, list) and slots[0][0]["samples"] is results["1"][0]["samples"]
    assert host.cached_outputs(executor, "no such node") is None
