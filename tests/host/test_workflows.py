"""example_workflows/: every workflow loads (no missing node types) and runs headless on a tiny model."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module")
def all_nodes(host):
    host.load_builtin_extras()
    host.load_pack()
    return host.import_host().NODE_CLASS_MAPPINGS


def test_there_are_workflows_with_thumbnails():
    names = {p.stem for p in WORKFLOWS}
    assert {"ledits_edit_photo_sd15", "ledits_edit_photo_sdxl", "ledits_reconstruct_only"} <= names
    for p in WORKFLOWS:
        assert p.with_suffix(".jpg").is_file(), f"{p.name} has no same-name .jpg thumbnail"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_has_no_missing_nodes(all_nodes, path):
    workflow = json.loads(path.read_text())
    missing = {n["type"] for n in workflow["nodes"]} - set(all_nodes)
    assert not missing, f"{path.name}: node types unknown to the host: {missing}"
    links = {link[0]: link for link in workflow["links"]}
    for node in workflow["nodes"]:
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                assert links[inp["link"]][3] == node["id"]


# The model folders a loader's file goes to, by node type (the frontend's missing-models dialog reads them).
MODEL_DIRECTORIES = {"CheckpointLoaderSimple": "checkpoints"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_names_its_models_as_the_host_templates_do(path):
    """Each model loader lists the file its widget names in properties.models (name, https url, directory),
    as the host's templates do; a workflow that loads no file (the toy one) lists none."""
    workflow = json.loads(path.read_text())
    listed = []
    for node in workflow["nodes"]:
        models = node.get("properties", {}).get("models", [])
        listed += models
        if node["type"] in MODEL_DIRECTORIES:
            assert [m["name"] for m in models] == [node["widgets_values"][0]], f"{path.name}: node {node['id']}"
            for model in models:
                assert model["directory"] == MODEL_DIRECTORIES[node["type"]]
                assert model["url"].startswith("https://") and model["name"] in model["url"]
    if not any(node["type"] in MODEL_DIRECTORIES for node in workflow["nodes"]):
        assert listed == [], f"{path.name} loads no model file but lists {listed}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_headless(host, all_nodes, path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import folder_paths
    import make_workflows
    from workflow_api import ui_to_api

    workflow = json.loads(path.read_text())
    ckpt = make_workflows.WORKFLOWS.get(path.stem, (None, None))[1]
    prompt = ui_to_api(workflow, all_nodes)
    if ckpt in make_workflows.FLOW_FAMILIES:  # SD3.5 / Flux.1: a tiny model of the family, its CLIP and a VAE
        sys.path.insert(0, str(ROOT / "tests" / "host"))
        import flow_server_nodes

        all_nodes.update(flow_server_nodes.NODE_CLASS_MAPPINGS)
        for node in prompt.values():
            if node["class_type"] == "CheckpointLoaderSimple":
                node.update(class_type="LeditsTestTinyFlowCheckpoint",
                            inputs={"family": make_workflows.FLOW_FAMILIES[ckpt], "seed": 0})
    else:
        prompt = host.with_random_checkpoints(prompt, family="sdxl" if "xl" in path.stem else "sd15")
    shipped = make_workflows.INVERSION.get(ckpt, {}).get("steps", 50)
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            shutil.copy(ROOT / "assets" / node["inputs"]["image"], Path(folder_paths.get_input_directory()))
        if node["class_type"] == "LeditsInversion":
            steps = 20 if node_is_toy(prompt) else shipped
            assert node["inputs"]["steps"] == steps and node["inputs"]["sampler"] == "dpmpp_2m_sde"
            node["inputs"]["steps"] = 3  # keep CPU time short; everything else as shipped
    decode = next(i for i, n in prompt.items() if n["class_type"] == "VAEDecode")
    outputs = host.run_prompt(prompt, outputs=None)
    image = outputs[decode][0]
    assert image.ndim == 4 and image.shape[-1] == 3 and torch.isfinite(image).all()
    saved = list(Path(folder_paths.get_output_directory()).glob("ledits_edit*.png"))
    assert saved, "SaveImage wrote nothing"


def node_is_toy(prompt):
    """The toy workflow runs on the LEDITS Toy Model (128 px scenes), at 20 steps."""
    return any(n["class_type"] == "LeditsToyModel" for n in prompt.values())


def test_headless_main_job_demo(comfy_job_server, tmp_path):
    """The README's main job (scripts/ledits_edit.py, a ComfyUI client) on the host's server: the demo's files."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import ledits_edit

    assert ledits_edit.main(["--server", comfy_job_server.url, "--out", str(tmp_path), "--steps", "3",
                             "--size", "64"]) == 0
    # the demo: one removal and one alteration, each in its own sampler on the one inversion
    for name in ("input", "reconstructed", "sheet", "edited_1", "edited_2", "masks_1", "masks_2",
                 "latent_change_1", "latent_change_2"):
        assert (tmp_path / f"{name}.png").is_file()
    assert not (tmp_path / "edited.png").exists()


def test_headless_job_edits_in_one_sampler(comfy_job_server, tmp_path):
    """Given --edit, all edits run in one sampler (unless --each): one edited.png, masks.png."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import ledits_edit

    assert ledits_edit.main(["--server", comfy_job_server.url, "--out", str(tmp_path), "--steps", "3",
                             "--size", "64", "--edit", "-red circle:25:0.9", "--edit", "+green square:40:0.8"]) == 0
    for name in ("input", "edited", "reconstructed", "masks", "latent_change", "sheet"):
        assert (tmp_path / f"{name}.png").is_file()
    assert not (tmp_path / "edited_1.png").exists()
