"""The translation and the help pages are complete (no host needed).

locales/en/nodeDefs.json is the English source: exactly what the node schemas in nodes/ define (a host
test, tests/host/test_locales_schema.py, keeps the two equal). Here: every node, input, output, name,
description and tooltip of it has a Chinese entry in locales/zh/, every string of our own UI
(main.json) too, and every node has a help page in both languages in web/docs/ (the frontend fetches
docs/<NodeId>/<locale>.md from the pack's web directory, then docs/<NodeId>.md).
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCALES = ROOT / "locales"
DOCS = ROOT / "web" / "docs"
CJK = re.compile(r"[\u4e00-\u9fff]")
# Entries the Chinese UI writes like the English one (ComfyUI's own zh locale keeps these as they are).
SAME_IN_ZH = {"clip", "CLIP", "VAE", "Latent", "Sigmas"}


def load(lang, name):
    return json.loads((LOCALES / lang / name).read_text(encoding="utf-8"))


EN, ZH = load("en", "nodeDefs.json"), load("zh", "nodeDefs.json")


def entries(tree, path=()):
    """Every string of a locale file as (key path, text)."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from entries(value, (*path, key))
        else:
            yield (*path, key), value


def lookup(tree, path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def test_node_ids_in_nodes_are_in_the_english_source():
    """A cheap, host-free check that no node of nodes/ is missing from locales/en (the host test checks
    inputs, outputs and tooltips)."""
    ids = set()
    for path in (ROOT / "nodes").glob("*.py"):
        ids |= set(re.findall(r'node_id\s*=\s*"([A-Za-z0-9_]+)"', path.read_text()))
    assert ids, "no node_id found in nodes/"
    assert ids <= set(EN), f"nodes without an entry in locales/en/nodeDefs.json: {sorted(ids - set(EN))}"


@pytest.mark.parametrize("name", ["nodeDefs.json", "main.json"])
def test_every_english_entry_has_a_chinese_one(name):
    en, zh = load("en", name), load("zh", name)
    missing = [".".join(path) for path, _ in entries(en) if not isinstance(lookup(zh, path), str)]
    assert not missing, f"locales/zh/{name} lacks: {missing}"
    extra = [".".join(path) for path, _ in entries(zh) if lookup(en, path) is None]
    assert not extra, f"locales/zh/{name} has entries the English source does not: {extra}"


def test_chinese_entries_are_translated():
    """Not empty, and written in Chinese (except the few terms ComfyUI's Chinese UI keeps)."""
    untranslated = []
    for path, text in entries(ZH):
        if not text.strip() or (not CJK.search(text) and text not in SAME_IN_ZH):
            untranslated.append(f"{'.'.join(path)} = {text!r}")
    assert not untranslated, "zh entries that are empty or not Chinese:\n" + "\n".join(untranslated)


def test_every_node_has_a_help_page_in_english_and_chinese():
    for node_id in EN:
        for lang, path in (("en", DOCS / f"{node_id}.md"), ("zh", DOCS / node_id / "zh.md")):
            assert path.is_file(), f"missing help page {path.relative_to(ROOT)}"
            text = path.read_text(encoding="utf-8")
            title = (EN if lang == "en" else ZH)[node_id]["display_name"]
            assert text.startswith(f"# {title}\n"), f"{path.relative_to(ROOT)} must start with '# {title}'"
            assert lang == "en" or len(CJK.findall(text)) > 100, f"{path.relative_to(ROOT)} is not in Chinese"
            # Images: relative to docs/ (the frontend resolves them against /extensions/<pack>/docs/).
            for src in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text):
                assert not src.startswith(("/", "http")), f"{path.name}: {src} must be relative to web/docs/"
                assert (DOCS / src).is_file(), f"{path.relative_to(ROOT)} shows {src}, which is not in web/docs/"


def test_no_help_page_for_a_node_that_does_not_exist():
    pages = {p.stem for p in DOCS.glob("*.md")} | {p.name for p in DOCS.iterdir() if p.is_dir() and p.name != "images"}
    assert pages <= set(EN), f"help pages of unknown nodes: {sorted(pages - set(EN))}"
