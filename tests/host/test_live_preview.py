"""Live previews (nodes/live_preview.py) on the in-process host: nothing without a browser, one message a step with one."""

import base64
import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3
SAMPLER, PREVIEW = "6", "7"
CLIENT = "fake-browser"


@pytest.fixture(scope="module")
def pack(host):
    torch.set_num_threads(1)
    host.load_pack()
    return {n: host.import_pack_module(f"nodes.{n}") for n in ("live_preview", "objects", "preview_node")}


def edit_prompt(host, warmup=0.0):
    """Tiny random SD1.5, a 64x96 empty photo, +sunglasses (from `warmup`) and -beard, sampler, mask preview."""
    concept = {"scale": 5.0, "threshold": 0.8, "warmup": 0.0, "cooldown": 1.0}
    return {
        "1": {"class_type": host.RANDOM_LOADER, "inputs": {"family": "sd15", "size": "tiny", "seed": 0}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 96, "height": 64, "batch_size": 1}},
        "3": {"class_type": "LeditsInversion", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "latent": ["2", 0], "steps": STEPS, "skip": 0.15,
            "sampler": "dpmpp_2m_sde", "scheduler": "karras", "seed": 1, "source_scale": 3.5}},
        "4": {"class_type": "LeditsConceptEdit", "inputs": {
            "clip": ["1", 1], "text": "sunglasses", "reverse": False, **concept, "warmup": warmup}},
        "5": {"class_type": "LeditsConceptEdit", "inputs": {
            "clip": ["1", 1], "text": "beard", "reverse": True, **concept, "previous": ["4", 0]}},
        SAMPLER: {"class_type": "LeditsSampler", "inputs": {
            "model": ["1", 0], "inversion": ["3", 0], "concepts": ["5", 0], "mask_mode": "intersect"}},
        PREVIEW: {"class_type": "LeditsMaskPreview", "inputs": {
            "masks": [SAMPLER, 1], "which": "final", "start_step": 0, "end_step": -1}},
    }


@pytest.fixture
def browser(server, monkeypatch):
    """A connected browser as the host's web server sees one: a socket under the prompt's client id."""
    monkeypatch.setattr(server, "client_id", None)
    monkeypatch.setattr(server, "sockets", {CLIENT: object()}, raising=False)
    return server


def decode(url):
    assert url.startswith("data:image/jpeg;base64,")
    raw = base64.b64decode(url.split(",", 1)[1])
    return raw, Image.open(io.BytesIO(raw))


def test_headless_run_sends_nothing(host, pack, server):
    assert pack["live_preview"].make_step_listener(["anything"], None, "6") is None  # no client: no work at all
    host.run_prompt(edit_prompt(host), outputs=[SAMPLER])
    assert not [e for e, _ in server.messages if e.startswith("ledits.")]


def test_connected_browser_gets_one_message_per_step(host, pack, browser):
    host.run_prompt(edit_prompt(host, warmup=0.4), outputs=[SAMPLER, PREVIEW], extra_data={"client_id": CLIENT})
    starts, steps = browser.events("ledits.start"), browser.events("ledits.step")
    assert len(starts) == 1 and starts[0]["node"] == SAMPLER
    assert [m["step"] for m in steps] == list(range(STEPS)), "exactly one ledits.step per step, in order"
    assert browser.messages.index(("ledits.start", starts[0])) < browser.messages.index(("ledits.step", steps[0]))
    colours = [list(pack["objects"].concept_colour(i)) for i in range(2)]
    for message in steps:
        assert message["node"] == SAMPLER and message["total"] == STEPS
        assert [c["label"] for c in message["concepts"]] == ["sunglasses", "beard"]
        assert [c["reverse"] for c in message["concepts"]] == [False, True]
        assert [c["colour"] for c in message["concepts"]] == colours
        for concept in message["concepts"]:
            raw, image = decode(concept["image"])
            assert 200 < len(raw) < 8000, f"a live preview should be a few KB, got {len(raw)} bytes"
            assert image.size == (128, 85), "latent aspect ratio (96x64 photo), 128 px on the long side"
    # warmup 0.4 of 3 steps: +sunglasses starts at step 1; -beard acts from step 0
    assert [[c["active"] for c in m["concepts"]] for m in steps] == [[False, True], [True, True], [True, True]]


def test_tint_is_the_mask_preview_blend(pack):
    """The live preview tints exactly like the LEDITS Mask Preview's panels (below their label band)."""
    image = torch.rand((1, 32, 48, 3), generator=torch.Generator().manual_seed(0))
    mask = torch.rand((32, 48), generator=torch.Generator().manual_seed(1)) > 0.5
    for index in range(3):
        live = pack["live_preview"].tint(image[0], mask, pack["objects"].concept_colour(index))
        labels = ["x"] * (index + 1)
        agg = torch.zeros((index + 1, 1, 32, 48))
        agg[index, 0] = mask.float()
        panel = pack["preview_node"].overlay_panels(image, agg, labels)[0, :, 48 * index:48 * (index + 1)]
        assert torch.allclose(live[16:], panel[16:], atol=1 / 255 + 1e-6)


def test_listener_skips_repeated_steps_and_a_gone_browser(pack, browser):
    browser.client_id = CLIENT
    listener = pack["live_preview"].make_step_listener([_Concept("cat")], _Model(), "9")
    assert browser.events("ledits.start") == [{"node": "9", "concepts": [
        {"index": 0, "label": "cat", "reverse": False, "scale": 5.0, "colour": list(pack["objects"].concept_colour(0))}]}]
    latent, masks = torch.randn((1, 4, 8, 8)), {0: _masks()}
    for step in (0, 0, 1):  # a second model call in the same step sends nothing more
        listener(step, 4, masks, latent)
    assert [m["step"] for m in browser.events("ledits.step")] == [0, 1]
    browser.sockets.clear()
    listener(2, 4, masks, latent)
    assert len(browser.events("ledits.step")) == 2


def test_js_palette_is_the_python_palette(pack):
    """web/ledits.js colours the concept summary before any run: its palette must be CONCEPT_COLOURS."""
    js = (ROOT / "web" / "ledits.js").read_text()
    block = re.search(r"CONCEPT_COLOURS\s*=\s*\[(.*?)\];", js, re.S).group(1)
    triples = [tuple(int(v) for v in t) for t in re.findall(r"\[(\d+),\s*(\d+),\s*(\d+)\]", block)]
    assert triples == list(pack["objects"].CONCEPT_COLOURS)


class _Concept:
    def __init__(self, label):
        self.label, self.reverse, self.scale = label, False, 5.0


class _Model:
    """Just what the previewer needs: an SD1.5 latent format on the CPU."""

    def __init__(self):
        import comfy.latent_formats

        self.load_device = torch.device("cpu")
        self.model = type("Inner", (), {"latent_format": comfy.latent_formats.SD15()})()


def _masks():
    """StepMasks-like: only the noise mask (mask mode "noise")."""
    mask = torch.zeros((1, 1, 8, 8), dtype=torch.bool)
    mask[..., 2:5, 3:6] = True
    return SimpleNamespace(attention=None, noise=mask, final=None)
