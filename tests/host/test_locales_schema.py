"""locales/en/nodeDefs.json is exactly what the node schemas define, and locales/zh covers all of it.

The schemas are the host's own view of our nodes (``GET_NODE_INFO_V1``, what the server sends the
frontend), so every node, input, output, name, description and tooltip defined in nodes/ is checked.
When a node changes, the test writes the English file the schemas call for to
tests/artifacts/nodeDefs.en.json: copy it to locales/en/ and translate the new entries in locales/zh/.
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"


def english_from_schemas(infos):
    """The frontend's nodeDefs locale layout for our nodes, in schema order."""
    out = {}
    for node_id, info in infos.items():
        entry = {"display_name": info["display_name"], "description": info["description"], "inputs": {},
                 "outputs": {}}
        for section in ("required", "optional"):
            for name in info["input_order"].get(section, []):
                spec = info["input"][section][name]
                tooltip = (spec[1] if len(spec) > 1 else {}).get("tooltip")
                entry["inputs"][name] = {"name": name, **({"tooltip": tooltip} if tooltip else {})}
        for index, (name, tooltip) in enumerate(zip(info["output_name"], info["output_tooltips"], strict=True)):
            entry["outputs"][str(index)] = {"name": name, **({"tooltip": tooltip} if tooltip else {})}
        out[node_id] = entry
    return out


def pack_node_infos(host):
    nodes = host.import_host()
    host.load_pack()
    module = f"custom_nodes.{ROOT.name}"
    infos = {node_id: cls.GET_NODE_INFO_V1() for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items()
             if getattr(cls, "RELATIVE_PYTHON_MODULE", None) == module}
    assert "LeditsSampler" in infos, f"our nodes were not found under {module}"
    return infos


def test_english_locale_is_the_node_schemas(host):
    expected = english_from_schemas(pack_node_infos(host))
    actual = json.loads((ROOT / "locales" / "en" / "nodeDefs.json").read_text(encoding="utf-8"))
    if actual != expected:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "nodeDefs.en.json").write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n")
    assert actual == expected, ("locales/en/nodeDefs.json differs from the node schemas: copy "
                                "tests/artifacts/nodeDefs.en.json there and translate the new entries in locales/zh/")


def test_every_schema_entry_has_a_chinese_one(host):
    expected = english_from_schemas(pack_node_infos(host))
    zh = json.loads((ROOT / "locales" / "zh" / "nodeDefs.json").read_text(encoding="utf-8"))
    missing = []
    for node_id, entry in expected.items():
        for key in ("display_name", "description"):
            if entry[key] and not zh.get(node_id, {}).get(key):
                missing.append(f"{node_id}.{key}")
        for group in ("inputs", "outputs"):
            for name, fields in entry[group].items():
                for field in fields:
                    if not zh.get(node_id, {}).get(group, {}).get(name, {}).get(field):
                        missing.append(f"{node_id}.{group}.{name}.{field}")
    assert not missing, "no Chinese entry in locales/zh/nodeDefs.json for:\n" + "\n".join(missing)
