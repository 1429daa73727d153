"""The pack in a real browser: the real ComfyUI server and its frontend, in headless Chromium (Playwright).

The server runs as a subprocess on 127.0.0.1 with a scratch base directory (custom_nodes/ holds a link to
this repository; models/, input/, output/ and user/ are fresh), so the host checkout is never written.
A random-weight SD1.5 checkpoint in the original file layout is generated once per session.

Checks: every example workflow loads through the UI with no missing node and no console error; the
SD1.5 edit workflow, queued from the UI, streams one live preview per step to the LEDITS Sampler node,
which draws them, and SaveImage writes the result; a LEDITS Inversion added by hand from the node search
starts with its seed fixed, so a second run after changing a concept re-runs the edit only; the LEDITS
Guider wiring of its help page runs; the node library's help panel shows each node's page; and, with
the frontend's language set to Chinese (Comfy.Locale), the nodes show the Chinese names and tooltips of
locales/zh/ and the Chinese help pages.

Screenshots go to tests/artifacts/. With LEDITS_UPDATE_DOCS=1 the test also refreshes the README's
pictures (docs/graph.png, docs/graph_zh.png) and the help pages' pictures of the UI
(web/docs/images/<lang>/*.png); the Chinese ones need a CJK font (Debian: fonts-noto-cjk).
"""

import json
import os
import re
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
HELP_DOCS = ROOT / "web" / "docs"
LOCALE_DEFS = {lang: json.loads((ROOT / "locales" / lang / "nodeDefs.json").read_text(encoding="utf-8"))
               for lang in ("en", "zh")}
OUR_NODES = list(LOCALE_DEFS["en"])
PACK = "ledits_pp"  # the folder name in custom_nodes/: the frontend serves web/ at /extensions/ledits_pp/
UPDATE_DOCS = bool(os.environ.get("LEDITS_UPDATE_DOCS"))
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
EDIT_WORKFLOW = ROOT / "example_workflows" / "ledits_edit_photo_sd15.json"
PROMPT_EDIT_WORKFLOW = ROOT / "example_workflows" / "ledits_prompt_edit_sd15.json"
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
# The help panel asks for docs/<NodeId>/<locale>.md first and falls back to docs/<NodeId>.md: in English
# that first request is a 404 by design (the English page is docs/<NodeId>.md).
HELP_PROBE = re.compile(rf"/extensions/{PACK}/docs/\w+/en\.md$")

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
    (base / "custom_nodes" / PACK).symlink_to(ROOT, target_is_directory=True)
    (base / "models" / "checkpoints" / CHECKPOINT).symlink_to(random_checkpoint)
    photo = Image.open(ROOT / "assets" / "ledits_sample.png").convert("RGB")
    photo.resize((PHOTO_SIDE, PHOTO_SIDE), Image.LANCZOS).save(base / "input" / "ledits_sample.png")
    shutil.copy(ROOT / "assets" / "ledits_toy_scene.png", base / "input")  # the toy workflow's scene
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
        if message.text.startswith("Failed to load resource") and (
                any(u in url for u in HOST_OPTIONAL_URLS) or HELP_PROBE.search(url)):
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


@pytest.fixture(autouse=True)
def _console_per_test(request):
    """Each test answers for its own console errors (the page, and so its Console, is shared)."""
    if "browser_page" in request.fixturenames:
        request.getfixturevalue("browser_page")[1].errors.clear()


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
    assert set(prompt[str(sampler["id"])]["inputs"]) <= {"model", "inversion", "concepts", "prompt_edit", "mask_mode"}
    if path == EDIT_WORKFLOW:
        summary = page.evaluate("(id) => app.graph.getNodeById(id).leditsConceptSummary()", sampler["id"])
        assert summary == "+sunglasses 6.0 \u00b7 +smile 4.0"
    untangle(page)
    page.screenshot(path=str(ARTIFACTS / f"browser_load_{path.stem}.png"), clip=fit_graph(page))
    if path == PROMPT_EDIT_WORKFLOW:
        save_ui_picture(page, prompt_edit_picture_nodes(workflow), "en", "prompt_edit")
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
    save_help_pictures(page, workflow, "en")
    if UPDATE_DOCS:  # refresh the README's picture on request only
        shutil.copy(ARTIFACTS / "browser_edit_done.png", ROOT / "docs" / "graph.png")
    print(f"[browser] queued edit ran in {run_s:.1f} s ({EDIT_STEPS} steps, {PHOTO_SIDE} px photo)")
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)


# --- helpers for the tests below ------------------------------------------------------------------------------


def ids_of(workflow, *types):
    return [n["id"] for n in workflow["nodes"] if n["type"] in types]


def screen_pos(page, node_id, kind, name):
    """Where the mouse goes to hover an input socket, a widget or an output of a node (page pixels)."""
    return page.evaluate("""([id, kind, name]) => {
        const node = app.graph.getNodeById(id), box = app.canvas.canvas.getBoundingClientRect();
        let p;
        if (kind === "input") p = node.getConnectionPos(true, node.inputs.findIndex((i) => i.name === name));
        else if (kind === "output") p = node.getConnectionPos(false, Number(name));
        else {
            const w = node.widgets.find((w) => w.name === name);
            p = [node.pos[0] + node.size[0] / 2, node.pos[1] + (w.last_y ?? w.y) + LiteGraph.NODE_WIDGET_HEIGHT / 2];
        }
        const c = app.canvas.ds.convertOffsetToCanvas(p);
        return {x: box.x + c[0], y: box.y + c[1]};
    }""", [node_id, kind, name])


def hover_tooltip(page, node_id, kind, name):
    """The frontend's tooltip (NodeTooltip) for that spot, as the user sees it after resting the mouse."""
    pos = screen_pos(page, node_id, kind, name)
    page.mouse.move(pos["x"] - 4, pos["y"] - 4)
    page.mouse.move(pos["x"], pos["y"])
    tooltip = page.locator(".node-tooltip")
    tooltip.wait_for(timeout=5_000)
    return tooltip.inner_text()


def crop_nodes(page, node_ids, path, pad=14):
    """Screenshot of a few nodes at zoom 1, centred (the help pages' pictures of the UI)."""
    rect = page.evaluate("""([ids, pad]) => {
        const nodes = ids.map((id) => app.graph.getNodeById(id)), title = LiteGraph.NODE_TITLE_HEIGHT;
        const x0 = Math.min(...nodes.map((n) => n.pos[0])) - pad, y0 = Math.min(...nodes.map((n) => n.pos[1] - title)) - pad;
        const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + pad;
        const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + pad;
        const ds = app.canvas.ds, box = app.canvas.canvas.getBoundingClientRect();
        ds.scale = 1;
        ds.offset[0] = (box.width - (x1 - x0)) / 2 - x0;
        ds.offset[1] = (box.height - (y1 - y0)) / 2 - y0;
        app.canvas.setDirty(true, true);
        app.canvas.draw(true, true);
        return {x: box.x + (box.width - (x1 - x0)) / 2, y: box.y + (box.height - (y1 - y0)) / 2, width: x1 - x0, height: y1 - y0};
    }""", [list(node_ids), pad])
    page.mouse.move(1, 1)  # no hover highlight or tooltip in the picture
    page.wait_for_timeout(300)
    page.screenshot(path=str(path), clip=rect)


def save_ui_picture(page, node_ids, lang, name):
    """A help page's picture of the UI: to tests/artifacts/, and to web/docs/images/<lang>/ on request."""
    crop_nodes(page, node_ids, ARTIFACTS / f"help_{lang}_{name}.png")
    if UPDATE_DOCS:
        (HELP_DOCS / "images" / lang).mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / f"help_{lang}_{name}.png", HELP_DOCS / "images" / lang / f"{name}.png")
    fit_graph(page)


def save_help_pictures(page, workflow, lang):
    """The help pages' pictures of the edit graph: the inversion's wiring, the sampler with its previews."""
    save_ui_picture(page, ids_of(workflow, "CheckpointLoaderSimple", "LoadImage", "VAEEncode", "LeditsInversion"),
                    lang, "inversion")
    save_ui_picture(page, ids_of(workflow, "LeditsSampler"), lang, "sampler_live")


def prompt_edit_picture_nodes(workflow):
    return ids_of(workflow, "CLIPTextEncode", "LeditsInversion", "LeditsPromptEdit")


def queue_and_wait(page, comfy_server):
    """Queue the graph from the UI and wait for the end; returns the node ids that ran and those cached."""
    page.evaluate("""async () => {
        if (!window.__leditsRun) {
            const api = window.comfyAPI.api.api, run = window.__leditsRun = {};
            api.addEventListener("executing", (e) => { if (e.detail) run.executed.push(String(e.detail)); });
            api.addEventListener("execution_cached", (e) => { run.cached.push(...e.detail.nodes.map(String)); });
            api.addEventListener("execution_success", () => { run.done = "success"; });
            api.addEventListener("execution_error", (e) => { run.done = "error: " + JSON.stringify(e.detail); });
        }
        Object.assign(window.__leditsRun, {executed: [], cached: [], done: null});
        await window.app.queuePrompt(0, 1);
    }""")
    page.wait_for_function("() => window.__leditsRun.done !== null", timeout=RUN_S * 1000)
    run = page.evaluate("() => window.__leditsRun")
    assert run["done"] == "success", f"{run['done']}\n{comfy_server.log_tail()}"
    return set(run["executed"]), set(run["cached"])


def node_types(page, ids):
    return sorted(page.evaluate("(ids) => ids.map((id) => app.graph.getNodeById(Number(id)).type)", sorted(ids)))


def set_locale(page, locale):
    """Change the frontend's language as the settings dialog does (Comfy.Locale); the frontend reloads the
    node definitions and the open workflow in that language."""
    title = LOCALE_DEFS[locale]["LeditsSampler"]["display_name"]
    page.evaluate("""async (locale) => {
        if (!app.graph.nodes.length) app.graph.add(LiteGraph.createNode("Note"));
        for (const node of app.graph.nodes) node.__leditsBeforeReload = true;
        await app.extensionManager.setting.set("Comfy.Locale", locale);
    }""", locale)
    page.wait_for_function("""(title) => LiteGraph.registered_node_types["LeditsSampler"].title === title
        && !app.graph.nodes.some((node) => node.__leditsBeforeReload)""", arg=title, timeout=30_000)
    page.wait_for_timeout(300)


def check_help_pages(page, lang):
    """Open each LEDITS node's help from the node library (search, hover, '?'): the frontend fetches our page
    for that language and renders it, pictures included."""
    back = page.locator(".node-help-content").locator("xpath=..").locator("button:has(.pi-arrow-left)")
    page.locator(".node-library-tab-button").click()
    try:
        for node_id in OUR_NODES:
            name = LOCALE_DEFS[lang][node_id]["display_name"]
            source = HELP_DOCS / (f"{node_id}.md" if lang == "en" else f"{node_id}/{lang}.md")
            markdown = source.read_text(encoding="utf-8")
            search = page.locator(".node-lib-search-box input")
            search.fill("LEDITS")
            leaf = page.locator(".node-lib-node-container").filter(
                has=page.get_by_text(re.compile(rf"^\s*{re.escape(name)}\s*$")))
            leaf.hover()
            url = f"/extensions/{PACK}/docs/" + (f"{node_id}.md" if lang == "en" else f"{node_id}/{lang}.md")
            with page.expect_response(lambda r, url=url: r.url.endswith(url)) as response:
                leaf.locator(".help-button").click()
            assert response.value.status == 200, f"{url}: {response.value.status}"
            content = page.locator(".node-help-content .markdown-content")
            content.locator("h1").wait_for(timeout=10_000)
            assert content.locator("h1").inner_text().strip() == markdown.splitlines()[0][2:] == name
            headings = [line[3:] for line in markdown.splitlines() if line.startswith("## ")]
            assert [h.strip() for h in content.locator("h2").all_inner_texts()] == headings
            assert "**" not in content.inner_text(), f"{source.name}: markdown left unrendered"
            page.wait_for_function("""() => [...document.querySelectorAll('.node-help-content img')]
                .every((img) => img.complete)""", timeout=10_000)
            images = page.evaluate("""() => [...document.querySelectorAll('.node-help-content img')]
                .map((img) => ({src: new URL(img.src).pathname, width: img.naturalWidth}))""")
            wanted = [f"/extensions/{PACK}/docs/{src}" for src in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", markdown)]
            assert [i["src"] for i in images] == wanted
            assert all(i["width"] > 0 for i in images), f"{source.name}: pictures that did not load: {images}"
            page.screenshot(path=str(ARTIFACTS / f"help_panel_{lang}_{node_id}.png"))
            back.click()
            search.wait_for(timeout=5_000)
    finally:  # back to the node list (a failed check leaves its page open), and close the sidebar
        if back.count():
            back.click()
        page.locator(".node-library-tab-button").click()
        page.wait_for_timeout(300)


def check_names_and_tooltips(page, node_id, node_type, lang):
    """Title, socket and widget names of a node in the UI, and the tooltip of each of its inputs and
    outputs as the user sees it when resting the mouse on it, against locales/<lang>/nodeDefs.json."""
    defs = LOCALE_DEFS[lang][node_type]
    state = page.evaluate("""(id) => { const n = app.graph.getNodeById(id); return {title: n.title,
        inputs: (n.inputs ?? []).map((i) => ({name: i.name, label: i.localized_name, widget: !!i.widget})),
        outputs: (n.outputs ?? []).map((o) => o.localized_name),
        widgets: (n.widgets ?? []).filter((w) => w.label !== undefined).map((w) => ({name: w.name, label: w.label,
                                                                             dom: !!w.element}))}; }""", node_id)
    assert state["title"] == defs["display_name"]
    for slot in state["inputs"]:
        assert slot["label"] == defs["inputs"][slot["name"]]["name"], f"{node_type}.{slot['name']}"
    for widget in state["widgets"]:
        if widget["name"] in defs["inputs"]:
            assert widget["label"] == defs["inputs"][widget["name"]]["name"], f"{node_type}.{widget['name']}"
    assert state["outputs"] == [defs["outputs"][str(i)]["name"] for i in range(len(state["outputs"]))]
    dom_widgets = {w["name"] for w in state["widgets"] if w["dom"]}  # the frontend leaves these to the browser
    for slot in state["inputs"]:
        tooltip = defs["inputs"][slot["name"]].get("tooltip")
        if tooltip and slot["name"] not in dom_widgets:
            kind = "widget" if slot["widget"] else "input"
            assert hover_tooltip(page, node_id, kind, slot["name"]) == tooltip, f"{node_type}.{slot['name']}"
    for index in range(len(state["outputs"])):
        tooltip = defs["outputs"][str(index)].get("tooltip")
        if tooltip:
            assert hover_tooltip(page, node_id, "output", str(index)) == tooltip, f"{node_type} output {index}"
    page.mouse.move(1, 1)


def guider_graph(page, workflow):
    """The help page's LEDITS Guider wiring, made from the edit workflow: the sampler and the mask preview
    give way to LEDITS Guider + SamplerCustomAdvanced, decoded and saved as before. Returns the new ids."""
    (sampler,), (preview,), (decode,), (save,) = (ids_of(workflow, t) for t in (
        "LeditsSampler", "LeditsMaskPreview", "VAEDecode", "SaveImage"))
    (loader,), (encode,), (inversion,) = (ids_of(workflow, t) for t in ("CheckpointLoaderSimple", "VAEEncode",
                                                                         "LeditsInversion"))
    concepts = ids_of(workflow, "LeditsConceptEdit")[-1]
    return page.evaluate("""([sampler, preview, decode, save, loader, encode, inversion, concepts]) => {
        const g = app.graph, at = g.getNodeById(sampler).pos.slice(), node = (id) => g.getNodeById(id);
        g.remove(node(sampler));
        g.remove(node(preview));
        const guider = LiteGraph.createNode("LeditsGuider"), custom = LiteGraph.createNode("SamplerCustomAdvanced");
        g.add(guider);
        g.add(custom);
        guider.pos = at;
        custom.pos = [at[0] + guider.size[0] + 60, at[1]];
        node(loader).connect(0, guider, "model");
        node(inversion).connect(0, guider, "inversion");
        node(concepts).connect(0, guider, "concepts");
        for (const [slot, name] of [[0, "guider"], [1, "sampler"], [2, "sigmas"], [3, "noise"]]) guider.connect(slot, custom, name);
        node(encode).connect(0, custom, "latent_image");
        custom.connect(0, node(decode), "samples");
        node(decode).pos = [custom.pos[0] + custom.size[0] + 60, at[1]];
        node(save).pos = [node(decode).pos[0], at[1] + node(decode).size[1] + 80];
        app.canvas.setDirty(true, true);
        return {guider: guider.id, custom: custom.id};
    }""", [sampler, preview, decode, save, loader, encode, inversion, concepts])


def open_node_search(page, x, y):
    """Double-click on the empty canvas, as a user does to add a node: the node search box opens. (Tried
    up to three times: on a loaded machine the canvas can take the two clicks for single ones.)"""
    search = page.get_by_placeholder("Search Nodes...")
    for _ in range(3):
        page.mouse.dblclick(x, y)
        try:
            search.wait_for(timeout=3_000)
            return search
        except sync_api.TimeoutError:
            page.keyboard.press("Escape")
    page.screenshot(path=str(ARTIFACTS / "browser_node_search_failed.png"))
    pytest.fail("the node search did not open on a double-click on the canvas")


def require_cjk_font():
    found = shutil.which("fc-list") and subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout
    if not found:
        pytest.fail("LEDITS_UPDATE_DOCS=1 needs a Chinese font for the Chinese screenshots (Debian: "
                    "apt-get install fonts-noto-cjk); without one they would show boxes")


# --- a node added by hand, the guider, help pages (English) -------------------------------------------------


def test_inversion_added_by_hand_keeps_its_seed(browser_page, comfy_server):
    """Invert once, edit many: a LEDITS Inversion added from the node search starts with 'control after
    generate' on fixed, so changing a concept's scale and queueing again re-runs only the edit."""
    page, console = browser_page
    workflow = edit_workflow()
    (shipped,), (loader,), (encode,), (sampler,) = (ids_of(workflow, t) for t in (
        "LeditsInversion", "CheckpointLoaderSimple", "VAEEncode", "LeditsSampler"))
    first_concept = ids_of(workflow, "LeditsConceptEdit")[0]
    load_workflow(page, workflow)
    fit_graph(page)
    spot = screen_pos(page, shipped, "output", "0")
    page.evaluate("(id) => app.graph.remove(app.graph.getNodeById(id))", shipped)
    search = open_node_search(page, spot["x"] - 150, spot["y"] + 60)  # where it was, now empty canvas
    search.fill("LEDITS Inversion")
    page.locator("li[role=option]", has_text="LEDITS Inversion").first.wait_for(timeout=5_000)
    page.keyboard.press("Enter")
    page.wait_for_function("() => app.graph.nodes.some((n) => n.type === 'LeditsInversion')", timeout=5_000)
    added = page.evaluate("""() => { const n = app.graph.nodes.find((n) => n.type === 'LeditsInversion');
        return {id: n.id, widgets: Object.fromEntries(n.widgets.map((w) => [w.name, w.value]))}; }""")
    assert added["widgets"]["control_after_generate"] == "fixed"
    assert added["widgets"]["seed"] == 0
    # What the frontend does for any other seed (our extension changes only LEDITS Inversion).
    assert page.evaluate("""() => { const k = LiteGraph.createNode('KSampler');
        return k.widgets.find((w) => w.name === 'control_after_generate').value; }""") == "randomize"
    page.evaluate("""([inv, loader, encode, sampler, steps]) => {
        const g = app.graph, n = g.getNodeById(inv);
        g.getNodeById(loader).connect(0, n, "model");
        g.getNodeById(loader).connect(1, n, "clip");
        g.getNodeById(encode).connect(0, n, "latent");
        n.connect(0, g.getNodeById(sampler), "inversion");
        n.widgets.find((w) => w.name === "steps").value = steps;
    }""", [added["id"], loader, encode, sampler, EDIT_STEPS])

    executed, _ = queue_and_wait(page, comfy_server)
    assert str(added["id"]) in executed, "the first run inverts the photo"
    page.evaluate("(id) => { app.graph.getNodeById(id).widgets.find((w) => w.name === 'scale').value = 7.5; }",
                  first_concept)
    executed, cached = queue_and_wait(page, comfy_server)
    assert str(added["id"]) in cached and str(added["id"]) not in executed, "the inversion was reused"
    assert node_types(page, executed) == ["LeditsConceptEdit", "LeditsConceptEdit", "LeditsMaskPreview",
                                          "LeditsSampler", "SaveImage", "VAEDecode"], "only the edit ran again"
    seed = page.evaluate("""(id) => Object.fromEntries(app.graph.getNodeById(id).widgets
        .filter((w) => ['seed', 'control_after_generate'].includes(w.name)).map((w) => [w.name, w.value]))""",
                         added["id"])
    assert seed == {"seed": 0, "control_after_generate": "fixed"}
    untangle(page)
    page.screenshot(path=str(ARTIFACTS / "browser_added_by_hand.png"), clip=fit_graph(page))
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)


def test_saved_workflows_keep_their_seed_mode(browser_page):
    """The 'fixed' start applies to new nodes only: a saved mode (randomize here) is loaded as saved, and the
    workflow saved by 0.1.0 loads with its widget values unchanged."""
    page, console = browser_page
    saved = json.loads((ROOT / "tests" / "data" / "workflow_saved_v0_1_0.json").read_text())
    for mode in ("fixed", "randomize"):
        for node in saved["nodes"]:
            if node["type"] == "LeditsInversion":
                node["widgets_values"][5] = mode
        load_workflow(page, saved)
        now = page.evaluate("() => app.graph.serialize().nodes.filter((n) => n.type.startsWith('Ledits'))"
                            ".map((n) => [n.id, n.widgets_values])")
        assert now == [[n["id"], n["widgets_values"]] for n in saved["nodes"] if n["type"].startswith("Ledits")]
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)


def test_guider_wiring_of_its_help_page_runs(browser_page, comfy_server):
    """The wiring the LEDITS Guider help page shows, made in the UI, runs: the guider and
    SamplerCustomAdvanced execute and SaveImage writes the result."""
    page, console = browser_page
    workflow = edit_workflow()
    load_workflow(page, workflow)
    added = guider_graph(page, workflow)
    executed, _ = queue_and_wait(page, comfy_server)
    assert {str(added["guider"]), str(added["custom"])} <= executed
    save_ui_picture(page, [added["guider"], added["custom"]], "en", "guider")
    check_names_and_tooltips(page, added["guider"], "LeditsGuider", "en")
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)


def test_help_pages_in_the_node_library(browser_page):
    page, console = browser_page
    check_help_pages(page, "en")
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)


# --- the same in Chinese --------------------------------------------------------------------------------------


@pytest.fixture
def chinese(browser_page):
    """The frontend in Chinese for one test, back in English after it."""
    page, _ = browser_page
    set_locale(page, "zh")
    try:
        yield page
    finally:
        set_locale(page, "en")


def test_chinese_names_tooltips_and_graph(browser_page, comfy_server, chinese):
    page, console = browser_page
    if UPDATE_DOCS:
        require_cjk_font()
    workflow = edit_workflow()
    load_workflow(page, workflow)
    untangle(page)
    fit_graph(page)
    ours = [(n["id"], n["type"]) for n in workflow["nodes"] if n["type"].startswith("Ledits")]
    for node_id, node_type in ours:
        check_names_and_tooltips(page, node_id, node_type, "zh")
    # A run (a new scale, so the edit runs again) for the live previews of the screenshot.
    first_concept = ids_of(workflow, "LeditsConceptEdit")[0]
    page.evaluate("(id) => { app.graph.getNodeById(id).widgets.find((w) => w.name === 'scale').value = 6.5; }",
                  first_concept)
    executed, _ = queue_and_wait(page, comfy_server)
    assert str(ids_of(workflow, "LeditsSampler")[0]) in executed
    page.wait_for_timeout(500)
    untangle(page)
    page.screenshot(path=str(ARTIFACTS / "browser_edit_done_zh.png"), clip=fit_graph(page))
    save_help_pictures(page, workflow, "zh")
    if UPDATE_DOCS:
        shutil.copy(ARTIFACTS / "browser_edit_done_zh.png", ROOT / "docs" / "graph_zh.png")
    # The guider, in its help page's wiring.
    load_workflow(page, workflow)
    added = guider_graph(page, workflow)
    fit_graph(page)
    check_names_and_tooltips(page, added["guider"], "LeditsGuider", "zh")
    save_ui_picture(page, [added["guider"], added["custom"]], "zh", "guider")
    # The prompt edit, in its example workflow.
    prompt_workflow = json.loads(PROMPT_EDIT_WORKFLOW.read_text())
    load_workflow(page, prompt_workflow)
    untangle(page)
    fit_graph(page)
    (prompt_edit,) = ids_of(prompt_workflow, "LeditsPromptEdit")
    check_names_and_tooltips(page, prompt_edit, "LeditsPromptEdit", "zh")
    save_ui_picture(page, prompt_edit_picture_nodes(prompt_workflow), "zh", "prompt_edit")
    # Any other node of the pack, added from scratch.
    checked = {t for _, t in ours} | {"LeditsGuider", "LeditsPromptEdit"}
    for node_type in sorted(set(OUR_NODES) - checked):
        node_id = page.evaluate("""(type) => { const n = LiteGraph.createNode(type);
            app.graph.add(n); n.pos = [0, -n.size[1] - 200]; return n.id; }""", node_type)
        fit_graph(page)
        check_names_and_tooltips(page, node_id, node_type, "zh")
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)


def test_chinese_help_pages_in_the_node_library(browser_page, chinese):
    page, console = browser_page
    check_help_pages(page, "zh")
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)
