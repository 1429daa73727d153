"""The pack in a real browser: the real ComfyUI server and its frontend, in headless Chromium (Playwright).

The server runs as a subprocess on 127.0.0.1 with a scratch base directory (custom_nodes/ holds a link to
this repository; models/, input/, output/ and user/ are fresh), so the host checkout is never written.
A random-weight SD1.5 checkpoint in the original file layout is generated once per session.

Checks: every example workflow loads through the UI with no missing node and no console error; the
SD1.5 edit workflow, queued from the UI, streams one live preview per step to the LEDITS Sampler node,
which draws them, and SaveImage writes the result. Screenshots go to tests/artifacts/; one of the
graph with live masks is copied to docs/graph.png (the README shows it) when LEDITS_UPDATE_DOCS=1.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
EDIT_WORKFLOW = ROOT / "example_workflows" / "ledits_edit_photo_sd15.json"
CHROMIUM = Path(os.environ.get("LEDITS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHECKPOINT = "ledits_random_sd15.safetensors"
PHOTO_SIDE = 128  # the bundled photo, downscaled: a 16x16 latent keeps the CPU run short
EDIT_STEPS = 3
SERVER_START_S, RUN_S = 120, 600
VIEWPORT = {"width": 1800, "height": 1000}
CANVAS_MARGINS = (70, 80, 20, 100)  # left, top, right, bottom: the frontend's bars and zoom controls

# The frontend's first start on an empty user folder: no template browser, no release check, and the
# navigation mode "custom" (1.27.10 throws from its own settings code while migrating the other modes).
USER_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Notification.ShowVersionUpdates": False,
                 "Comfy.InstalledVersion": "1.27.10", "Comfy.Minimap.Visible": False,
                 "Comfy.Canvas.NavigationMode": "custom"}
# Console errors the host frontend itself produces on a fresh, offline install (optional files it
# probes for, and the update check); anything else, above all from our web/ files, fails the test.
HOST_OPTIONAL_URLS = ("/user.css", "/favicon.ico", "/api/userdata", "/api/settings/", "https://api.comfy.org/")

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="session")
def random_checkpoint(host, tmp_path_factory):
    """A 0.64 GB random-weight SD1.5 checkpoint file the host's loader detects (made once per session,
    deleted at its end: pytest keeps its last temp folders)."""
    path = tmp_path_factory.mktemp("checkpoints") / CHECKPOINT
    host.import_random_models().save_random_checkpoint(path, family="sd15", seed=0, size="slim")
    yield path
    path.unlink(missing_ok=True)


class ComfyServer:
    def __init__(self, base, port, log_path, process):
        self.base, self.url, self.log_path, self.process = base, f"http://127.0.0.1:{port}", log_path, process

    def log_tail(self, chars=4000):
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self):
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                if "LeditsSampler" in _get(f"{self.url}/api/object_info/LeditsSampler"):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"ComfyUI did not serve the LEDITS++ nodes within {SERVER_START_S} s:\n{self.log_tail()}")


@pytest.fixture(scope="module")
def comfy_server(host, random_checkpoint, tmp_path_factory):
    """The real ComfyUI server (python main.py --cpu) on 127.0.0.1 with this pack as a custom node."""
    base = tmp_path_factory.mktemp("comfy_base")
    for sub in ("custom_nodes", "models/checkpoints", "input", "output", "temp", "user/default"):
        (base / sub).mkdir(parents=True)
    (base / "custom_nodes" / "ledits_pp").symlink_to(ROOT, target_is_directory=True)
    (base / "models" / "checkpoints" / CHECKPOINT).symlink_to(random_checkpoint)
    photo = Image.open(ROOT / "assets" / "ledits_sample.png").convert("RGB")
    photo.resize((PHOTO_SIDE, PHOTO_SIDE), Image.LANCZOS).save(base / "input" / "ledits_sample.png")
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(USER_SETTINGS))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "comfy_server.log"
    port = _free_port()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if os.environ.get("COMFYUI_TEST_THREADS"):
        env["OMP_NUM_THREADS"] = os.environ["COMFYUI_TEST_THREADS"]
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base), "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}",
               "--disable-auto-launch", "--disable-api-nodes"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=host.host_path(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    server = ComfyServer(base, port, log_path, process)
    try:
        server.wait_ready()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


class Console:
    """Browser console errors and uncaught page errors, minus the host's known offline noise."""

    def __init__(self, page):
        self.errors = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error.stack or error}"))

    def _on_console(self, message):
        if message.type != "error":
            return
        url = message.location.get("url", "")
        if message.text.startswith("Failed to load resource") and any(u in url for u in HOST_OPTIONAL_URLS):
            return
        self.errors.append(f"{message.text} ({url})")


@pytest.fixture(scope="module")
def browser_page(comfy_server):
    """A headless Chromium page with the ComfyUI frontend loaded; yields (page, Console)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set LEDITS_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            console = Console(page)
            page.goto(comfy_server.url)
            page.wait_for_function("() => window.app?.graph && window.app.extensions?.length", timeout=60_000)
            page.wait_for_function("() => LiteGraph.registered_node_types['LeditsSampler']", timeout=30_000)
            yield page, console
        finally:
            browser.close()


def load_workflow(page, workflow):
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(300)


def open_dialogs(page):
    return page.evaluate("() => [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText)")


def fit_graph(page):
    """Zoom and centre the canvas on all nodes, clear of the UI's bars; returns the screen rectangle of the graph.

    LiteGraph: screen = (graph + offset) * scale.
    """
    rect = page.evaluate("""([left, top, right, bottom]) => {
        const nodes = app.graph.nodes, title = LiteGraph.NODE_TITLE_HEIGHT, pad = 20;
        const x0 = Math.min(...nodes.map((n) => n.pos[0])) - pad;
        const y0 = Math.min(...nodes.map((n) => n.pos[1] - title)) - pad;
        const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + pad;
        const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + pad;
        const canvas = app.canvas.canvas, ds = app.canvas.ds, box = canvas.getBoundingClientRect();
        const w = box.width - left - right, h = box.height - top - bottom;
        ds.scale = Math.min(w / (x1 - x0), h / (y1 - y0), 1.5);
        ds.offset[0] = (left + (w - (x1 - x0) * ds.scale) / 2) / ds.scale - x0;
        ds.offset[1] = (top + (h - (y1 - y0) * ds.scale) / 2) / ds.scale - y0;
        app.canvas.setDirty(true, true);
        app.canvas.draw(true, true);
        return {x: box.x + (x0 + ds.offset[0]) * ds.scale, y: box.y + (y0 + ds.offset[1]) * ds.scale,
                width: (x1 - x0) * ds.scale, height: (y1 - y0) * ds.scale};
    }""", CANVAS_MARGINS)
    page.wait_for_timeout(300)
    return rect


def untangle(page):
    """Move nodes down until none covers another (the frontend draws widgets taller than the shipped
    layout allows, and the sampler grows with its previews): a tidy graph for the screenshots."""
    page.evaluate("""() => {
        const title = LiteGraph.NODE_TITLE_HEIGHT, gap = 20;
        const nodes = [...app.graph.nodes].sort((a, b) => a.pos[1] - b.pos[1]);
        for (const [i, node] of nodes.entries()) {
            for (const above of nodes.slice(0, i)) {
                const sameColumn = node.pos[0] < above.pos[0] + above.size[0] && node.pos[0] + node.size[0] > above.pos[0];
                const free = above.pos[1] + above.size[1] + title + gap;
                if (sameColumn && node.pos[1] < free) node.pos[1] = free;
            }
        }
        app.canvas.setDirty(true, true);
    }""")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_loads_in_the_ui(browser_page, path):
    page, console = browser_page
    workflow = json.loads(path.read_text())
    load_workflow(page, workflow)
    state = page.evaluate("""() => app.graph.nodes.map((n) => ({
        id: n.id, type: n.type, known: !!LiteGraph.registered_node_types[n.type], errors: !!n.has_errors}))""")
    assert len(state) == len(workflow["nodes"])
    assert all(n["known"] and not n["errors"] for n in state), f"nodes the UI does not know: {state}"
    dialogs = open_dialogs(page)
    assert not any("missing" in d.lower() for d in dialogs), f"missing-node dialog: {dialogs}"
    sampler = next(n for n in workflow["nodes"] if n["type"] == "LeditsSampler")
    saved = page.evaluate("(id) => app.graph.serialize().nodes.find((n) => n.id === id).widgets_values", sampler["id"])
    assert saved == sampler["widgets_values"], "the live preview widget must not be saved in the workflow"
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert set(prompt[str(sampler["id"])]["inputs"]) <= {"model", "inversion", "concepts", "mask_mode"}
    if path == EDIT_WORKFLOW:
        summary = page.evaluate("(id) => app.graph.getNodeById(id).leditsConceptSummary()", sampler["id"])
        assert summary == "+sunglasses 6.0 \u00b7 +smile 4.0"
    untangle(page)
    page.screenshot(path=str(ARTIFACTS / f"browser_load_{path.stem}.png"), clip=fit_graph(page))
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)


def edit_workflow():
    """The shipped SD1.5 edit workflow with the random checkpoint and a short inversion."""
    workflow = json.loads(EDIT_WORKFLOW.read_text())
    for node in workflow["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = CHECKPOINT
        if node["type"] == "LeditsInversion":
            node["widgets_values"][0] = EDIT_STEPS
    return workflow


def test_live_previews_while_the_edit_runs(browser_page, comfy_server):
    page, console = browser_page
    workflow = edit_workflow()
    sampler = next(n["id"] for n in workflow["nodes"] if n["type"] == "LeditsSampler")
    load_workflow(page, workflow)
    page.evaluate("""() => {
        const api = window.comfyAPI.api.api;
        window.__ledits = {starts: 0, steps: [], done: null};
        api.addEventListener("ledits.start", () => { window.__ledits.starts += 1; });
        api.addEventListener("ledits.step", (e) => { window.__ledits.steps.push(e.detail.step); });
        api.addEventListener("execution_success", () => { window.__ledits.done = "success"; });
        api.addEventListener("execution_error", (e) => { window.__ledits.done = "error: " + JSON.stringify(e.detail); });
    }""")
    started = time.monotonic()
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    page.wait_for_function("() => window.__ledits.steps.length > 0", timeout=RUN_S * 1000)
    untangle(page)
    page.screenshot(path=str(ARTIFACTS / "browser_edit_running.png"), clip=fit_graph(page))
    page.wait_for_function("() => window.__ledits.done !== null", timeout=RUN_S * 1000)
    run_s = time.monotonic() - started
    received = page.evaluate("() => window.__ledits")
    assert received["done"] == "success", f"{received['done']}\n{comfy_server.log_tail()}"
    assert received["starts"] == 1
    assert received["steps"] == list(range(EDIT_STEPS)), "one ledits.step per step, in order"

    page.wait_for_function("""(id) => {
        const live = app.graph.getNodeById(id).leditsLive;
        return live.concepts.every((c) => c.img?.complete && c.img.naturalWidth > 0);
    }""", arg=sampler, timeout=10_000)
    fit_graph(page)  # draws the canvas once more, with every preview loaded
    live = page.evaluate("""(id) => {
        const live = app.graph.getNodeById(id).leditsLive;
        return {step: live.step, total: live.total, received: live.received, drawn: live.drawnImages,
                concepts: live.concepts.map((c) => ({label: c.label, colour: c.colour, width: c.img.naturalWidth,
                                                      height: c.img.naturalHeight}))};
    }""", sampler)
    assert (live["step"], live["total"], live["received"]) == (EDIT_STEPS - 1, EDIT_STEPS, EDIT_STEPS)
    assert [c["label"] for c in live["concepts"]] == ["sunglasses", "smile"]
    assert [c["colour"] for c in live["concepts"]] == [[230, 25, 75], [60, 180, 75]]
    assert all(max(c["width"], c["height"]) == 128 for c in live["concepts"])
    assert live["drawn"] == 2, "the sampler node drew both previews on the canvas"

    history = _get(f"{comfy_server.url}/api/history")
    outputs = next(iter(history.values()))["outputs"]
    image = outputs["9"]["images"][0]
    assert (comfy_server.base / "output" / image["subfolder"] / image["filename"]).is_file()
    assert outputs["10"]["images"], "the LEDITS Mask Preview showed its panels"

    page.wait_for_timeout(500)  # SaveImage / Mask Preview show their images
    untangle(page)
    page.screenshot(path=str(ARTIFACTS / "browser_edit_done.png"), clip=fit_graph(page))
    if os.environ.get("LEDITS_UPDATE_DOCS"):  # refresh the README's picture on request only
        shutil.copy(ARTIFACTS / "browser_edit_done.png", ROOT / "docs" / "graph.png")
    print(f"[browser] queued edit ran in {run_s:.1f} s ({EDIT_STEPS} steps, {PHOTO_SIDE} px photo)")
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)
