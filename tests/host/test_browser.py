"""The pack in a real browser: the real ComfyUI server and its frontend, in headless Chromium (Playwright).

The server runs as a subprocess on 127.0.0.1 with a scratch base directory (custom_nodes/ holds a link to
this repository; models/, input/, output/ and user/ are fresh), so the host checkout is never written.
A random-weight SD1.5 checkpoint in the original file layout is generated once per session.

Checks: every example workflow loads through the UI with no missing node and no console error; the
SD1.5 edit workflow, queued from the UI, streams one live preview per step to the LEDITS Sampler node,
which draws them, and SaveImage writes the result; a LEDITS Inversion added by hand from the node search
starts with its seed fixed, so a second run after changing a concept re-runs the edit only; the LEDITS
Guider wiring of its help page runs; each node's help page shows where the frontend shows help (the right side
panel's Info tab, or 1.27's node library); and, with
the frontend's language set to Chinese (Comfy.Locale), the nodes show the Chinese names and tooltips of
locales/zh/ and the Chinese help pages.

Each check runs per frontend (the host's pinned one and each static folder in LEDITS_FRONTEND_ROOTS) and per
renderer (the canvas, and Nodes 2.0 where the frontend offers Comfy.VueNodes.Enabled in its settings); checks that
do not depend
on the renderer run with the canvas only. One server per frontend serves both renderers.

Screenshots go to tests/artifacts/. With LEDITS_UPDATE_DOCS=1 the test also refreshes the README's
pictures (docs/graph.png, docs/graph_zh.png) and the help pages' pictures of the UI
(web/docs/images/<lang>/*.png); the Chinese ones need a CJK font (Debian: fonts-noto-cjk).
"""

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
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
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_client import die_with_parent as _die_with_parent  # noqa: E402  (no server outlives a killed test run)

VIEWPORT = {"width": 1800, "height": 1000}
CANVAS_MARGINS = (70, 80, 20, 100)  # left, top, right, bottom: the frontend's bars and zoom controls

# The frontend's first start on an empty user folder: no template browser, no release check, and the
# navigation mode "custom" (1.27.10 throws from its own settings code while migrating the other modes), and
# the tooltip delay at its minimum, 100 ms (default 500; canvas and Nodes 2.0): the tests rest the mouse on every
# socket and widget of our nodes, about 70 times a page.
USER_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Notification.ShowVersionUpdates": False,
                 "Comfy.InstalledVersion": "1.27.10", "Comfy.Minimap.Visible": False,
                 "Comfy.Canvas.NavigationMode": "custom", "LiteGraph.Node.TooltipDelay": 100}
# Console errors the host frontend itself produces on a fresh, offline install (optional files it
# probes for, and the update check); anything else, above all from our web/ files, fails the test.
HOST_OPTIONAL_URLS = ("/user.css", "/favicon.ico", "/api/userdata", "/api/settings/", "https://api.comfy.org/")
URL_IN_TEXT = re.compile(r"https?://[^\s'\"()]+")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
VUE_SETTING = "Comfy.VueNodes.Enabled"
RENDERERS = ("canvas", "vue")
# What the frontend logs when such a probe fails (the model sizes of the missing-models dialog).
HOST_OFFLINE_MESSAGES = ("Error fetching file size",)
# What a frontend logs on every start, from its own code (1.49.6: a store read before the app is set up).
HOST_START_MESSAGES = ("ComfyApp graph accessed before initialization",)
# The help panel asks for docs/<NodeId>/<locale>.md first and falls back to docs/<NodeId>.md: in English
# that first request is a 404 by design (the English page is docs/<NodeId>.md).
HELP_PROBE = re.compile(rf"/extensions/{PACK}/docs/\w+/en\.md$")



class Frontend:
    """A frontend of the range: the host's pinned one (root None) or a static folder for --front-end-root."""

    def __init__(self, root):
        if root is None:
            spec = importlib.util.find_spec("comfyui_frontend_package")
            static = Path(spec.origin).parent / "static" if spec else None
            version = importlib.metadata.version("comfyui-frontend-package") if spec else "pinned"
        else:
            static = Path(root)
            infos = sorted(static.parent.parent.glob("comfyui_frontend_package-*.dist-info"))
            version = infos[-1].name.removesuffix(".dist-info").split("-")[1] if infos else static.parent.parent.name
        self.root, self.static, self.version = root, static, version

    def _bundle(self):
        return [f.read_text(errors="replace") for f in sorted((self.static / "assets").glob("*.js"))] if self.static else []

    def has_setting(self, key):
        """Whether the frontend's code mentions a setting id (read from its bundled JS)."""
        return any(key in text for text in self._bundle())

    def setting_type(self, key):
        """The type a setting is declared with in the frontend's settings list ('boolean', 'combo', ...; 'hidden'
        for one the settings dialog does not show), or None where the frontend does not declare it."""
        declared = re.compile(r"id:\s*[\"'`]" + re.escape(key) + r"[\"'`].{0,600}?type:\s*[\"'`](\w+)[\"'`]", re.S)
        return next((m.group(1) for text in self._bundle() if (m := declared.search(text))), None)

    def renderers(self):
        """The canvas, and Nodes 2.0 where the frontend offers it to its users: a setting of the settings dialog.
        (1.27 declares Comfy.VueNodes.Enabled 'hidden', an experiment behind a keybinding, not a renderer.)"""
        vue = self.setting_type(VUE_SETTING) not in (None, "hidden")
        return RENDERERS if vue else ("canvas",)


FRONTENDS = [Frontend(None)] + [Frontend(r) for r in os.environ.get("LEDITS_FRONTEND_ROOTS", "").split(os.pathsep) if r]


def pytest_generate_tests(metafunc):
    """Every browser check on each frontend (the pinned one, then LEDITS_FRONTEND_ROOTS) and each renderer it
    offers: one server per frontend, shared by its renderers. A test that takes `canvas_only` runs under the
    canvas renderer alone: what it checks does not depend on how nodes are drawn."""
    if "frontend" in metafunc.fixturenames:
        pairs = [(f, r) for f in FRONTENDS for r in f.renderers()
                 if r == "canvas" or "canvas_only" not in metafunc.fixturenames]
        metafunc.parametrize(["frontend", "renderer"], pairs, ids=[f"{f.version}-{r}" for f, r in pairs],
                             indirect=True, scope="module")


@pytest.fixture(scope="module")
def frontend(request):
    return request.param


@pytest.fixture(scope="module")
def renderer(request):
    return request.param


@pytest.fixture
def canvas_only():
    """Marker fixture: see pytest_generate_tests."""


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
def comfy_server(host, random_checkpoint, frontend, tmp_path_factory):
    """The real ComfyUI server (python main.py --cpu) on 127.0.0.1 with this pack as a custom node, serving
    that frontend."""
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
    log_path = ARTIFACTS / f"comfy_server_{frontend.version}.log"
    port = _free_port()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if os.environ.get("COMFYUI_TEST_THREADS"):
        env["OMP_NUM_THREADS"] = os.environ["COMFYUI_TEST_THREADS"]
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base), "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}",
               "--disable-auto-launch", "--disable-api-nodes"]
    if frontend.root:
        command += ["--front-end-root", str(frontend.root)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=host.host_path(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
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

    @staticmethod
    def _offline_probe(text, url):
        """The frontend reaching for the internet (model sizes of its templates, release notes): every URL
        the message names is off this machine, and none is one of our /extensions/ files."""
        if f"/extensions/{PACK}/" in url:
            return False
        if text.startswith(HOST_OFFLINE_MESSAGES):
            return True
        named = URL_IN_TEXT.findall(text)
        if text.startswith("Failed to load resource") and urllib.parse.urlsplit(url).hostname not in LOCAL_HOSTS:
            return True
        return (bool(named) and f"/extensions/{PACK}/" not in text + url
                and all(urllib.parse.urlsplit(u).hostname not in LOCAL_HOSTS for u in named))

    def __init__(self, page):
        self.errors = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error.stack or error}"))

    def _on_console(self, message):
        if message.type != "error":
            return
        url = message.location.get("url", "")
        if message.text in HOST_START_MESSAGES and urllib.parse.urlsplit(url).path.startswith("/assets/"):
            return  # the frontend's own start-up (seen after each reload), from its own bundle
        if message.text.startswith("Failed to load resource") and (
                any(u in url for u in HOST_OPTIONAL_URLS) or HELP_PROBE.search(url)):
            return
        if self._offline_probe(message.text, url):
            return
        self.errors.append(f"{message.text} ({url})")


@pytest.fixture(scope="module")
def browser_page(comfy_server, frontend, renderer):
    """A headless Chromium page with the ComfyUI frontend loaded in that renderer (the setting
    Comfy.VueNodes.Enabled, set through the frontend's settings API, then the page reloaded); yields
    (page, Console)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set LEDITS_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            console = Console(page)
            page.goto(comfy_server.url)
            wait_for_app(page)
            page.evaluate("async ([key, on]) => { await app.extensionManager.setting.set(key, on); }",
                          [VUE_SETTING, renderer == "vue"])
            page.reload()
            wait_for_app(page)
            assert page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? null") in (frontend.version, None)
            assert page.evaluate("(key) => app.extensionManager.setting.get(key)", VUE_SETTING) == (renderer == "vue")
            if renderer == "vue" and not vue_shows_dom_widgets(page):
                pytest.fail(f"frontend {frontend.version}: its Nodes 2.0 shows no DOM widget at "
                            "all, not even the host's own prompt box of CLIP Text Encode: live previews cannot show")
            yield page, console
        finally:
            browser.close()


def wait_for_app(page):
    page.wait_for_function("() => window.app?.graph && window.app.extensions?.length", timeout=60_000)
    page.wait_for_function("() => LiteGraph.registered_node_types['LeditsSampler']", timeout=30_000)


def shot(page, frontend, renderer, name):
    return str(ARTIFACTS / f"browser_{frontend.version}_{renderer}_{name}.png")


def vue_shows_dom_widgets(page):
    """Whether Nodes 2.0 puts DOM widgets in its nodes: the host's CLIP Text Encode shows its prompt box."""
    shown = page.evaluate("""async () => {
        app.graph.clear();
        const node = LiteGraph.createNode("CLIPTextEncode");
        app.graph.add(node);
        await new Promise((r) => setTimeout(r, 1000));
        const found = !!document.querySelector(`[data-node-id="${node.id}"] textarea`);
        app.graph.clear();
        return found;
    }""")
    return shown


def vue_nodes_shown(page):
    """Nodes 2.0 draws each node as a DOM element with data-node-id; the canvas renderer draws none."""
    return page.evaluate("() => document.querySelectorAll('[data-node-id]').length") > 0


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


def settle_view(page, quiet_ms=450, timeout_ms=6000):
    """Wait until the canvas's view (offset, zoom) has stayed put for ``quiet_ms``: 1.49.6 glides the view to a node
    just added, 300 ms later and for a while, and a pan or zoom set meanwhile is undone by the glide."""
    page.evaluate("""([quiet, timeout]) => new Promise((resolve) => {
        const ds = app.canvas.ds, start = performance.now(), view = () => `${ds.offset[0]},${ds.offset[1]},${ds.scale}`;
        let last = view(), since = start;
        const tick = () => {
            const now = performance.now(), current = view();
            if (current !== last) { last = current; since = now; }
            if (now - since >= quiet || now - start >= timeout) resolve(); else requestAnimationFrame(tick);
        };
        requestAnimationFrame(tick);
    })""", [quiet_ms, timeout_ms])


def fit_graph(page):
    """Zoom and centre the canvas on all nodes, clear of the UI's bars; returns the screen rectangle of the graph.

    LiteGraph: screen = (graph + offset) * scale.
    """
    settle_view(page)
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


def server_models(comfy_server, directory):
    """The model files the server has in one of its model folders (its /api/models/<folder>)."""
    return set(_get(f"{comfy_server.url}/api/models/{directory}"))


def models_named(workflow):
    return [m["name"] for n in workflow["nodes"] for m in n.get("properties", {}).get("models", [])]


def close_dialogs(page):
    for _ in range(3):
        if not open_dialogs(page):
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    assert not open_dialogs(page), f"a dialog that does not close: {open_dialogs(page)}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_loads_in_the_ui(browser_page, comfy_server, frontend, renderer, path):
    page, console = browser_page
    workflow = json.loads(path.read_text())
    load_workflow(page, workflow)
    state = page.evaluate("""() => app.graph.nodes.map((n) => ({
        id: n.id, type: n.type, known: !!LiteGraph.registered_node_types[n.type], errors: !!n.has_errors}))""")
    assert len(state) == len(workflow["nodes"])
    assert all(n["known"] for n in state), f"nodes the UI does not know: {state}"
    # Newer frontends flag a loader whose model file the server does not have; that is the only error allowed,
    # and only on a loader that names the file it needs (properties.models) when the server lacks it.
    missing = {n["id"] for n in workflow["nodes"]
               if any(m["name"] not in server_models(comfy_server, m.get("directory", "checkpoints"))
                      for m in n.get("properties", {}).get("models", []))}
    missing = {str(i) for i in missing}  # newer frontends keep node ids as strings
    flagged = {str(n["id"]) for n in state if n["errors"]}
    assert flagged <= missing, f"nodes flagged with errors that name no missing model: {flagged - missing}"
    dialogs = open_dialogs(page)
    assert not any("node" in d.lower() and "missing" in d.lower() for d in dialogs), f"missing-node dialog: {dialogs}"
    models = models_named(workflow)
    if models:  # frontends that show a missing-models dialog must name the file the user has to fetch
        assert all(all(m in d for m in models) for d in dialogs), f"dialogs that do not name {models}: {dialogs}"
    else:
        assert not dialogs, f"the toy workflow needs no download, yet: {dialogs}"
    close_dialogs(page)
    assert vue_nodes_shown(page) == (renderer == "vue"), f"{renderer} renderer expected"
    sampler = next(n for n in workflow["nodes"] if n["type"] == "LeditsSampler")
    saved = page.evaluate("(id) => app.graph.serialize().nodes.find((n) => n.id === id).widgets_values", sampler["id"])
    assert saved == sampler["widgets_values"], "the live preview widget must not be saved in the workflow"
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert set(prompt[str(sampler["id"])]["inputs"]) <= {"model", "inversion", "concepts", "prompt_edit", "mask_mode",
                                                        "keep_photo_outside_masks"}
    if path == EDIT_WORKFLOW:
        summary = page.evaluate("(id) => app.graph.getNodeById(id).leditsConceptSummary()", sampler["id"])
        assert summary == "+sunglasses 6.0 \u00b7 +smile 4.0"
        shown = page.locator(f'[data-node-id="{sampler["id"]}"] .ledits-summary' if renderer == "vue" else ".ledits-summary")
        assert shown.first.inner_text() == summary, "the summary line the user sees"
    untangle(page)
    page.screenshot(path=shot(page, frontend, renderer, f"load_{path.stem}"), clip=fit_graph(page))
    if path == PROMPT_EDIT_WORKFLOW and renderer == "canvas":
        save_ui_picture(page, prompt_edit_picture_nodes(workflow), "en", "prompt_edit")
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)


CONCEPT_WIDGETS = ("text", "scale", "threshold", "reverse", "warmup", "cooldown")  # LeditsConceptEdit's widgets_values


def edit_workflow(first_scale=None):
    """The shipped SD1.5 edit workflow with the random checkpoint (no download named) and a short inversion;
    first_scale: another scale for the first concept (the edit runs again, the inversion stays cached)."""
    workflow = json.loads(EDIT_WORKFLOW.read_text())
    concepts = [n for n in workflow["nodes"] if n["type"] == "LeditsConceptEdit"]
    for node in workflow["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = CHECKPOINT
            node.get("properties", {}).pop("models", None)
        if node["type"] == "LeditsInversion":
            node["widgets_values"][0] = EDIT_STEPS
    if first_scale is not None:
        concepts[0]["widgets_values"][CONCEPT_WIDGETS.index("scale")] = first_scale
    return workflow


def colour_pixels(png_path, colour, tolerance=40):
    """How many pixels of a screenshot are within tolerance of a colour (per channel)."""
    picture = Image.open(png_path).convert("RGB")
    return sum(1 for px in picture.getdata() if all(abs(a - b) <= tolerance for a, b in zip(px, colour, strict=True)))


def check_previews_seen(page, frontend, renderer, sampler, labels, colours):
    """What the user sees on the sampler: one loaded picture per concept, on screen, framed in the concept's
    colour, and the summary line with the last step."""
    root = page.locator(f'[data-node-id="{sampler}"] .ledits-live' if renderer == "vue" else ".ledits-live").first
    images = root.locator("img")
    page.wait_for_function("""(sel) => { const imgs = [...document.querySelectorAll(sel)];
        return imgs.length && imgs.every((i) => i.complete && i.naturalWidth > 0); }""",
                           arg=".ledits-live img", timeout=10_000)
    assert images.count() == len(labels)
    viewport = page.viewport_size
    for i, (label, colour) in enumerate(zip(labels, colours, strict=True)):
        image = images.nth(i)
        assert image.is_visible()
        natural = image.evaluate("(img) => [img.naturalWidth, img.naturalHeight]")
        assert max(natural) == 128, natural
        box = image.bounding_box()
        assert box and box["width"] >= 16 and box["x"] >= 0 and box["y"] >= 0
        assert box["x"] + box["width"] <= viewport["width"] and box["y"] + box["height"] <= viewport["height"]
        path = shot(page, frontend, renderer, f"preview_{i}")
        image.screenshot(path=path)
        assert colour_pixels(path, colour) >= box["width"], f"{label}: no frame in its colour on screen"
        caption = root.locator("figcaption").nth(i).inner_text()
        assert caption.endswith(label)
    assert root.locator(".ledits-progress").inner_text() == f"{EDIT_STEPS}/{EDIT_STEPS}"


def test_live_previews_while_the_edit_runs(browser_page, comfy_server, frontend, renderer):
    """The SD1.5 edit, queued from the UI, streams one live preview per step to the LEDITS Sampler, which shows
    them (pictures on screen), keeps them after the run and SaveImage writes the result. Under Nodes 2.0 the
    first concept's scale differs, so only the edit runs again (the inversion is cached on the server)."""
    page, console = browser_page
    workflow = edit_workflow(first_scale=None if renderer == "canvas" else 5.5)
    sampler = next(n["id"] for n in workflow["nodes"] if n["type"] == "LeditsSampler")
    load_workflow(page, workflow)
    page.evaluate("""() => {
        const api = window.comfyAPI.api.api;
        window.__ledits = {starts: 0, steps: [], done: null, shownAtStart: null};
        api.addEventListener("ledits.start", () => {
            window.__ledits.starts += 1;
            // The frontend's own handler ran first (registered at setup): the old pictures are gone.
            window.__ledits.shownAtStart = [...document.querySelectorAll(".ledits-live img")].filter((i) => i.src).length;
        });
        api.addEventListener("ledits.step", (e) => { window.__ledits.steps.push(e.detail.step); });
        api.addEventListener("execution_success", () => { window.__ledits.done = "success"; });
        api.addEventListener("execution_error", (e) => { window.__ledits.done = "error: " + JSON.stringify(e.detail); });
    }""")
    started = time.monotonic()
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    page.wait_for_function("() => window.__ledits.steps.length > 0 || window.__ledits.done !== null"
                           " || Object.keys(app.lastNodeErrors ?? {}).length > 0", timeout=RUN_S * 1000)
    refused = page.evaluate("() => app.lastNodeErrors")
    assert not refused, f"the server refused the prompt: {refused}\n{comfy_server.log_tail()}"
    untangle(page)
    page.screenshot(path=shot(page, frontend, renderer, "edit_running"), clip=fit_graph(page))
    page.wait_for_function("() => window.__ledits.done !== null", timeout=RUN_S * 1000)
    run_s = time.monotonic() - started
    received = page.evaluate("() => window.__ledits")
    assert received["done"] == "success", f"{received['done']}\n{comfy_server.log_tail()}"
    assert received["starts"] == 1
    assert received["shownAtStart"] == 0, "a new run starts with no old pictures"
    assert received["steps"] == list(range(EDIT_STEPS)), "one ledits.step per step, in order"
    page.wait_for_timeout(500)  # SaveImage / Mask Preview show their images
    untangle(page)
    fit_graph(page)
    check_previews_seen(page, frontend, renderer, sampler, ["sunglasses", "smile"], [[230, 25, 75], [60, 180, 75]])

    history = _get(f"{comfy_server.url}/api/history")
    outputs = list(history.values())[-1]["outputs"]  # the host keeps them in the order they ran
    image = outputs["9"]["images"][0]
    assert (comfy_server.base / "output" / image["subfolder"] / image["filename"]).is_file()
    assert outputs["10"]["images"], "the LEDITS Mask Preview showed its panels"
    page.screenshot(path=shot(page, frontend, renderer, "edit_done"), clip=fit_graph(page))
    if renderer == "canvas":
        save_help_pictures(page, workflow, "en")
        if UPDATE_DOCS:  # refresh the README's picture on request only
            shutil.copy(shot(page, frontend, renderer, "edit_done"), ROOT / "docs" / "graph.png")
    print(f"[browser] queued edit ran in {run_s:.1f} s ({EDIT_STEPS} steps, {PHOTO_SIDE} px photo)")
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)


# --- helpers for the tests below ------------------------------------------------------------------------------


def ids_of(workflow, *types):
    return [n["id"] for n in workflow["nodes"] if n["type"] in types]


# The spot (graph coordinates) of a node's input socket, output or widget, as a JS function body of (id, kind, name).
SPOT_JS = """
    const node = app.graph.getNodeById(id);
    if (kind === "input") return node.getConnectionPos(true, node.inputs.findIndex((i) => i.name === name));
    if (kind === "output") return node.getConnectionPos(false, Number(name));
    const w = node.widgets.find((w) => w.name === name);
    return [node.pos[0] + node.size[0] / 2, node.pos[1] + (w.last_y ?? w.y) + LiteGraph.NODE_WIDGET_HEIGHT / 2];
"""


def screen_pos(page, node_id, kind, name):
    """Where the mouse goes to hover an input socket, a widget or an output of a node (page pixels)."""
    return page.evaluate("""([id, kind, name]) => {
        const p = ((id, kind, name) => {%s})(id, kind, name), box = app.canvas.canvas.getBoundingClientRect();
        const c = app.canvas.ds.convertOffsetToCanvas(p);
        return {x: box.x + c[0], y: box.y + c[1]};
    }""" % SPOT_JS, [node_id, kind, name])


def centre_on(page, node_id, kind, name):
    """Pan the canvas (same zoom) so that a node's socket or widget lies in the middle of the canvas, clear of the
    UI's bars, panels and toasts, and wait until the view stays there (1.49.6 glides the view to a node after some
    actions, for a third of a second, undoing a pan made meanwhile); returns the spot (page pixels) and what
    covers it (None: the canvas itself)."""
    settle_view(page)
    for _ in range(6):
        centre = page.evaluate("""([id, kind, name]) => {
            const p = ((id, kind, name) => {%s})(id, kind, name);
            const ds = app.canvas.ds, box = app.canvas.canvas.getBoundingClientRect();
            ds.offset[0] = box.width / 2 / ds.scale - p[0];
            ds.offset[1] = box.height / 2 / ds.scale - p[1];
            app.canvas.setDirty(true, true);
            app.canvas.draw(true, true);
            return {x: box.x + box.width / 2, y: box.y + box.height / 2};
        }""" % SPOT_JS, [node_id, kind, name])
        page.wait_for_timeout(500)  # the canvas redraws (LiteGraph learns the widgets' new places); a glide ends
        pos = screen_pos(page, node_id, kind, name)
        if abs(pos["x"] - centre["x"]) < 1 and abs(pos["y"] - centre["y"]) < 1:
            break
    covered = page.evaluate("""([x, y]) => { const e = document.elementFromPoint(x, y);
        return e === app.canvas.canvas ? null : (e ? `${e.tagName}.${e.className}` : "nothing"); }""",
                            [pos["x"], pos["y"]])
    return pos, covered


def hover_tooltip(page, node_id, kind, name):
    """The frontend's tooltip (NodeTooltip) for that spot, as the user sees it after resting the mouse.

    The spot is brought to the middle of the canvas first: where the graph lay after a run, a toast or the queue's
    panel may cover it, and the frontend shows node tooltips only for a mouse on the canvas itself."""
    tooltip = page.locator(".node-tooltip")
    for attempt in range(3):  # the mouse rests again when a loaded machine missed the first rest
        pos, covered = centre_on(page, node_id, kind, name)
        page.mouse.move(pos["x"] - 4, pos["y"] - 4)
        page.mouse.move(pos["x"], pos["y"])
        try:
            tooltip.wait_for(timeout=4_000)
            return tooltip.inner_text()
        except sync_api.TimeoutError:
            if attempt == 2:
                page.screenshot(path=str(ARTIFACTS / f"tooltip_failed_{node_id}_{kind}_{name}.png"))
                over = page.evaluate("() => app.canvas.node_over?.id ?? null")
                raise AssertionError(f"no tooltip for {kind} {name!r} of node {node_id} at {pos}: the element there "
                                     f"is {covered or 'the canvas'}, LiteGraph's node under the mouse is {over}") from None
            page.mouse.move(1, 1)
            page.wait_for_timeout(300)


def crop_nodes(page, node_ids, path, pad=14):
    """Screenshot of a few nodes at zoom 1, centred (the help pages' pictures of the UI); taken again when the
    view moved meanwhile (a picture of the empty canvas went into a help page's place once)."""
    for _ in range(3):
        settle_view(page)
        rect, view = _centre_nodes_at_zoom_1(page, node_ids, pad)
        page.mouse.move(1, 1)  # no hover highlight or tooltip in the picture
        page.wait_for_timeout(300)
        page.screenshot(path=str(path), clip=rect)
        if page.evaluate("() => [app.canvas.ds.offset[0], app.canvas.ds.offset[1], app.canvas.ds.scale]") == view:
            return
    views = page.evaluate("""() => new Promise((resolve) => { const seen = [], ds = app.canvas.ds;
        const tick = () => { seen.push([ds.offset[0], ds.offset[1], ds.scale].map((v) => Math.round(v)));
                             if (seen.length < 20) setTimeout(tick, 100); else resolve(seen); };
        tick(); })""")
    tours = page.evaluate("""() => [...document.querySelectorAll('[class*="coach"], [class*="spotlight"], [class*="tour"]')]
        .map((e) => e.className).slice(0, 5)""")
    raise AssertionError(f"the view kept moving while the picture of nodes {list(node_ids)} was taken: "
                         f"views over 2 s {views}; tour elements {tours}")


def _centre_nodes_at_zoom_1(page, node_ids, pad):
    return page.evaluate("""([ids, pad]) => {
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
        return [{x: box.x + (box.width - (x1 - x0)) / 2, y: box.y + (box.height - (y1 - y0)) / 2, width: x1 - x0,
                 height: y1 - y0}, [ds.offset[0], ds.offset[1], ds.scale]];
    }""", [list(node_ids), pad])


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
    page.wait_for_function("() => window.__leditsRun.done !== null || Object.keys(app.lastNodeErrors ?? {}).length > 0",
                           timeout=RUN_S * 1000)
    refused = page.evaluate("() => app.lastNodeErrors")
    assert not refused, f"the server refused the prompt: {refused}\n{comfy_server.log_tail()}"
    run = page.evaluate("() => window.__leditsRun")
    assert run["done"] == "success", f"{run['done']}\n{comfy_server.log_tail()}"
    return set(run["executed"]), set(run["cached"])


def node_types(page, ids):
    return sorted(page.evaluate("(ids) => ids.map((id) => app.graph.getNodeById(Number(id)).type)", sorted(ids)))


def set_locale(page, locale):
    """Set the frontend's language as the settings dialog does (Comfy.Locale, through the frontend's settings
    API) and reload the page, as a user does: 1.27 re-translates the open graph at once, later frontends
    (1.49.6 here) had not re-translated the node titles 30 s after the change, only after a reload."""
    title = LOCALE_DEFS[locale]["LeditsSampler"]["display_name"]
    page.evaluate("async (locale) => { await app.extensionManager.setting.set('Comfy.Locale', locale); }", locale)
    page.reload()
    wait_for_app(page)
    page.wait_for_function("(title) => LiteGraph.registered_node_types['LeditsSampler'].title === title",
                           arg=title, timeout=30_000)
    page.wait_for_timeout(300)
    close_dialogs(page)  # the reopened workflow may name a model this server lacks


NODE_LIBRARY = "Workspace.ToggleSidebarTab.node-library"


def run_command(page, command):
    page.evaluate("async (id) => { await app.extensionManager.command.execute(id); }", command)
    page.wait_for_timeout(300)


def nearest(locator, box):
    """Of the visible elements a locator finds, the one whose centre is nearest to box's, vertically."""
    centre = box["y"] + box["height"] / 2
    found = [(abs(b["y"] + b["height"] / 2 - centre), i) for i in range(locator.count())
             if (b := locator.nth(i).bounding_box()) and b["height"]]
    assert found, "nothing found near the node in the library"
    return locator.nth(min(found)[1])


RIGHT_PANEL_SETTING = "Comfy.RightSidePanel.IsOpen"


def check_help_pages(page, frontend, lang):
    """Open each LEDITS node's help page where the frontend shows it and check what it renders. Frontends with
    the right side panel (1.37 on): select the node on the canvas, open the panel, its Info tab. Older ones
    (1.27): the node library (its command; then search, hover, '?', as a user does)."""
    if frontend.has_setting(RIGHT_PANEL_SETTING):
        check_help_pages_in_the_side_panel(page, lang)
    else:
        check_help_pages_in_the_node_library(page, lang)


def help_source(node_id, lang):
    return HELP_DOCS / (f"{node_id}.md" if lang == "en" else f"{node_id}/{lang}.md")


def check_help_content(page, node_id, lang):
    """The help page the frontend rendered for a node: our markdown for that language, pictures loaded."""
    name = LOCALE_DEFS[lang][node_id]["display_name"]
    source = help_source(node_id, lang)
    markdown = source.read_text(encoding="utf-8")
    title = page.get_by_role("heading", level=1, name=name, exact=True).filter(visible=True).first
    title.wait_for(timeout=10_000)
    content = title.locator("xpath=..")
    assert title.inner_text().strip() == markdown.splitlines()[0][2:] == name
    headings = [line[3:] for line in markdown.splitlines() if line.startswith("## ")]
    assert [h.strip() for h in content.get_by_role("heading", level=2).all_inner_texts()] == headings, source.name
    assert "**" not in content.inner_text(), f"{source.name}: markdown left unrendered"
    if "![" in markdown:
        content.locator("img").last.wait_for(timeout=10_000)
    page.wait_for_function("(el) => [...el.querySelectorAll('img')].every((img) => img.complete)",
                           arg=content.element_handle(), timeout=10_000)
    images = content.evaluate("""(el) => [...el.querySelectorAll('img')]
        .map((img) => ({src: new URL(img.src).pathname, width: img.naturalWidth}))""")
    wanted = [f"/extensions/{PACK}/docs/{src}" for src in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", markdown)]
    assert [i["src"] for i in images] == wanted
    assert all(i["width"] > 0 for i in images), f"{source.name}: pictures that did not load: {images}"
    page.screenshot(path=str(ARTIFACTS / f"help_panel_{lang}_{node_id}.png"))


def check_help_pages_in_the_side_panel(page, lang):
    """Per node: on an empty canvas, click the node's title (it is selected), the right side panel shows it,
    its Info tab (the label the user sees, from the frontend's own translations) shows the help page."""
    info = page.evaluate("() => document.querySelector('#vue-app').__vue_app__.config.globalProperties"
                         ".$t('rightSidePanel.info')")
    page.evaluate("(key) => app.extensionManager.setting.set(key, true)", RIGHT_PANEL_SETTING)
    try:
        for node_id in OUR_NODES:
            page.evaluate("""(type) => { app.graph.clear(); const n = LiteGraph.createNode(type);
                app.graph.add(n); n.pos = [300, 300]; }""", node_id)
            fit_graph(page)
            page.wait_for_timeout(300)
            spot = page.evaluate("""() => { const n = app.graph.nodes[0], box = app.canvas.canvas.getBoundingClientRect();
                const c = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + 40, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT / 2]);
                return {x: box.x + c[0], y: box.y + c[1]}; }""")
            tab = page.get_by_role("tab", name=info, exact=True)
            for _ in range(3):  # a click the canvas takes for something else (a loaded machine) is repeated
                page.mouse.move(spot["x"] - 3, spot["y"])
                page.mouse.click(spot["x"], spot["y"])
                try:
                    tab.wait_for(timeout=3_000)
                    break
                except sync_api.TimeoutError:
                    pass
            try:
                tab.click(timeout=5_000)
            except sync_api.TimeoutError:
                page.screenshot(path=str(ARTIFACTS / f"help_panel_{lang}_{node_id}_failed.png"))
                raise
            check_help_content(page, node_id, lang)
    finally:
        page.evaluate("(key) => app.extensionManager.setting.set(key, false)", RIGHT_PANEL_SETTING)
        page.evaluate("() => app.graph.clear()")


def check_help_pages_in_the_node_library(page, lang):
    run_command(page, NODE_LIBRARY)
    back = page.locator("button").filter(has=page.locator("[class*=arrow-left]"))
    try:
        for node_id in OUR_NODES:
            name = LOCALE_DEFS[lang][node_id]["display_name"]
            search = page.get_by_placeholder(re.compile("search|搜索", re.I)).filter(visible=True).first
            search.fill("LEDITS")
            leaf = page.get_by_text(re.compile(rf"^\s*{re.escape(name)}\s*$")).filter(visible=True).first
            leaf.hover()
            help_button = nearest(page.locator("button:has([class*=question]), .help-button"), leaf.bounding_box())
            help_button.click()
            check_help_content(page, node_id, lang)
            back.filter(visible=True).first.click()
            search.wait_for(timeout=5_000)
    finally:  # back to the node list (a failed check leaves its page open), and close the sidebar
        if back.filter(visible=True).count():
            back.filter(visible=True).first.click()
        run_command(page, NODE_LIBRARY)


def vue_tooltip(page, node_id, text, last=False):
    """Nodes 2.0: the tooltip (role tooltip) shown when the mouse rests on a visible name in the node."""
    found = page.locator(f'[data-node-id="{node_id}"]').get_by_text(text, exact=True)
    (found.last if last else found.first).hover()
    tooltip = page.get_by_role("tooltip").filter(visible=True)
    tooltip.first.wait_for(timeout=5_000)
    shown = tooltip.first.inner_text()
    page.mouse.move(1, 1)
    page.wait_for_timeout(200)
    return shown


# Multiline text inputs: a text box whose label takes no pointer, left to the browser as on the canvas.
TEXT_BOXES = {"LeditsConceptEdit": ("text",), "LeditsPromptEdit": ("source", "target")}


def host_socket_tooltips_fall_back(page):
    """Whether this frontend's Nodes 2.0 shows 'Input: <translated name>' on the host's own KSampler 'model'
    socket, which has a tooltip: 1.49.6 looks a socket's tooltip up by its translated name, so outside English
    no node's socket shows its tooltip (1.58.1 looks it up by the socket). Asked once per page."""
    known = page.evaluate("() => window.__leditsSocketFallback ?? null")
    if known is not None:
        return known
    node_id = page.evaluate("""() => { const n = LiteGraph.createNode("KSampler"); app.graph.add(n);
        n.pos = [0, -n.size[1] - 600]; return n.id; }""")
    fit_graph(page)
    label = page.evaluate("(id) => app.graph.getNodeById(id).inputs.find((i) => i.name === 'model').localized_name",
                          node_id)
    falls_back = vue_tooltip(page, node_id, label) == f"Input: {label}"
    page.evaluate("([id, v]) => { app.graph.remove(app.graph.getNodeById(id)); window.__leditsSocketFallback = v; }",
                  [node_id, falls_back])
    fit_graph(page)
    return falls_back


def check_vue_names_and_tooltips(page, node_id, node_type, lang):
    """Nodes 2.0: the node shows its title, socket and widget names as text, each with its tooltip."""
    defs = LOCALE_DEFS[lang][node_type]
    node = page.locator(f'[data-node-id="{node_id}"]')
    node.get_by_text(defs["display_name"], exact=True).first.wait_for(timeout=5_000)
    for name, spec in defs["inputs"].items():
        if not page.evaluate("([id, name]) => app.graph.getNodeById(id).inputs?.some((i) => i.name === name)"
                             " || app.graph.getNodeById(id).widgets?.some((w) => w.name === name)", [node_id, name]):
            continue  # an optional input this node does not show
        assert node.get_by_text(spec["name"], exact=True).count(), f"{node_type}.{name}: {spec['name']} not shown"
        if spec.get("tooltip") and name not in TEXT_BOXES.get(node_type, ()):
            shown = vue_tooltip(page, node_id, spec["name"])
            if shown == f"Input: {spec['name']}" and lang != "en" and host_socket_tooltips_fall_back(page):
                continue  # the frontend's own fallback for every node's socket in this language (see below)
            value = page.evaluate("([id, name]) => app.graph.getNodeById(id).widgets?.find((w) => w.name === name)?.value",
                                  [node_id, name])
            # 1.49.6 puts a combo's chosen option under its tooltip
            assert shown in (spec["tooltip"], f"{spec['tooltip']}\n\n{value}"), f"{node_type}.{name}"
    for index, spec in sorted(defs.get("outputs", {}).items()):
        assert node.get_by_text(spec["name"], exact=True).count(), f"{node_type} output {index}"
        if spec.get("tooltip"):
            assert vue_tooltip(page, node_id, spec["name"], last=True) == spec["tooltip"], f"{node_type} output {index}"


def check_names_and_tooltips(page, node_id, node_type, lang):
    """Title, socket and widget names of a node in the UI, and the tooltip of each of its inputs and
    outputs as the user sees it when resting the mouse on it, against locales/<lang>/nodeDefs.json."""
    if page.evaluate("(key) => app.extensionManager.setting.get(key)", VUE_SETTING):
        check_vue_names_and_tooltips(page, node_id, node_type, lang)
        return
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
    """Open the node search box as a user does to add a node at a spot: the mouse rests on the empty canvas
    there and the frontend's own command (Workspace.SearchBox.Toggle, what its shortcut runs) opens it.
    (1.27 also opened it on a double-click on the canvas; later frontends do not.)"""
    page.mouse.move(x, y)
    run_command(page, "Workspace.SearchBox.Toggle")
    search = page.locator("input:focus")  # the box the command opens takes the keyboard, whatever its wording
    try:
        search.wait_for(timeout=5_000)
    except sync_api.TimeoutError:
        page.screenshot(path=str(ARTIFACTS / "browser_node_search_failed.png"))
        pytest.fail("the node search did not open with the command Workspace.SearchBox.Toggle")
    return search


def place_new_node(page, x, y):
    """Place a node just added from the search with a click, as the user does where the frontend adds it as a ghost
    that follows the mouse (1.49.6: until the click, the canvas pans by itself whenever the mouse nears its edge,
    in this test and in every later one); earlier frontends place it at once."""
    if page.evaluate("() => app.canvas.state?.ghostNodeId == null"):
        return
    for _ in range(3):
        # the search box closes first (a click on it would not reach the canvas)
        page.wait_for_function("([x, y]) => document.elementFromPoint(x, y) === app.canvas.canvas", arg=[x, y],
                               timeout=5_000)
        page.mouse.move(x, y)
        page.mouse.click(x, y)
        try:
            page.wait_for_function("() => app.canvas.state.ghostNodeId == null", timeout=3_000)
            return
        except sync_api.TimeoutError:
            pass
    page.screenshot(path=str(ARTIFACTS / "ghost_node_not_placed.png"))
    raise AssertionError("a click on the canvas did not place the node added from the search")


def require_cjk_font():
    found = shutil.which("fc-list") and subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout
    if not found:
        pytest.fail("LEDITS_UPDATE_DOCS=1 needs a Chinese font for the Chinese screenshots (Debian: "
                    "apt-get install fonts-noto-cjk); without one they would show boxes")


# --- a node added by hand, the guider, help pages (English) -------------------------------------------------


def test_inversion_added_by_hand_keeps_its_seed(browser_page, comfy_server, frontend, renderer, canvas_only):
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
    where = (spot["x"] - 150, spot["y"] + 60)  # where it was, now empty canvas
    search = open_node_search(page, *where)
    search.fill("LEDITS Inversion")
    page.locator("[role=option]", has_text="LEDITS Inversion").first.wait_for(timeout=5_000)
    page.keyboard.press("Enter")
    page.wait_for_function("() => app.graph.nodes.some((n) => n.type === 'LeditsInversion')", timeout=5_000)
    place_new_node(page, *where)
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
    page.screenshot(path=shot(page, frontend, renderer, "added_by_hand"), clip=fit_graph(page))
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)


# widgets added after 0.1.0, with their defaults: what the frontend appends to a workflow saved by 0.1.0
ADDED_SINCE_0_1_0 = {"LeditsSampler": [False], "LeditsGuider": [False]}  # keep_photo_outside_masks


def test_saved_workflows_keep_their_seed_mode(browser_page, renderer):
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
        # its values as saved; a widget added since comes after them, at its default
        assert now == [[n["id"], n["widgets_values"] + ADDED_SINCE_0_1_0.get(n["type"], [])]
                       for n in saved["nodes"] if n["type"].startswith("Ledits")]
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)


def test_guider_wiring_of_its_help_page_runs(browser_page, comfy_server, renderer, canvas_only):
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


def test_help_pages(browser_page, frontend, renderer, canvas_only):
    page, console = browser_page
    check_help_pages(page, frontend, "en")
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


def test_chinese_names_tooltips_and_graph(browser_page, comfy_server, frontend, renderer, chinese):
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
    if UPDATE_DOCS:  # a run (a new scale, so the edit runs again) for the live previews of the pictures
        first_concept = ids_of(workflow, "LeditsConceptEdit")[0]
        page.evaluate("(id) => { app.graph.getNodeById(id).widgets.find((w) => w.name === 'scale').value = 6.5; }",
                      first_concept)
        executed, _ = queue_and_wait(page, comfy_server)
        assert str(ids_of(workflow, "LeditsSampler")[0]) in executed
        page.wait_for_timeout(500)
        untangle(page)
        page.screenshot(path=shot(page, frontend, renderer, "edit_done_zh"), clip=fit_graph(page))
        save_help_pictures(page, workflow, "zh")
        shutil.copy(shot(page, frontend, renderer, "edit_done_zh"), ROOT / "docs" / "graph_zh.png")
    # The guider, in its help page's wiring.
    load_workflow(page, workflow)
    added = guider_graph(page, workflow)
    fit_graph(page)
    check_names_and_tooltips(page, added["guider"], "LeditsGuider", "zh")
    if renderer == "canvas":
        save_ui_picture(page, [added["guider"], added["custom"]], "zh", "guider")
    # The prompt edit, in its example workflow.
    prompt_workflow = json.loads(PROMPT_EDIT_WORKFLOW.read_text())
    load_workflow(page, prompt_workflow)
    close_dialogs(page)  # the missing-models dialog some frontends show for the checkpoint it names
    untangle(page)
    fit_graph(page)
    (prompt_edit,) = ids_of(prompt_workflow, "LeditsPromptEdit")
    check_names_and_tooltips(page, prompt_edit, "LeditsPromptEdit", "zh")
    (sampler,) = ids_of(prompt_workflow, "LeditsSampler")
    summary = page.locator(f'[data-node-id="{sampler}"] .ledits-summary' if renderer == "vue" else ".ledits-summary")
    assert summary.first.inner_text().startswith("提示词编辑"), "our own strings, in Chinese from /i18n"
    if renderer == "canvas":
        save_ui_picture(page, prompt_edit_picture_nodes(prompt_workflow), "zh", "prompt_edit")
    # Any other node of the pack, added from scratch.
    checked = {t for _, t in ours} | {"LeditsGuider", "LeditsPromptEdit"}
    for node_type in sorted(set(OUR_NODES) - checked):
        node_id = page.evaluate("""(type) => { const n = LiteGraph.createNode(type);
            app.graph.add(n); n.pos = [0, -n.size[1] - 200]; return n.id; }""", node_type)
        fit_graph(page)
        check_names_and_tooltips(page, node_id, node_type, "zh")
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)


def test_chinese_help_pages(browser_page, frontend, renderer, canvas_only, chinese):
    page, console = browser_page
    check_help_pages(page, frontend, "zh")
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)
