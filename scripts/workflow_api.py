"""Convert a ComfyUI UI-format workflow (what example_workflows/ holds) to the API prompt format.

The UI format stores widget values as a list in the order of the node's widget inputs; the frontend
adds one extra value after a seed widget (its 'control after generate' mode) and after an image
upload combo. Linked inputs become [source node id, output slot].
"""

from __future__ import annotations

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def widget_names(node_class) -> list[tuple[str, dict, int]]:
    """(name, options, extra values after it) for each widget input of a node class, in order."""
    spec = node_class.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            kind = value[0]
            opts = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            is_widget = isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES
            if opts.get("forceInput") or not is_widget:
                continue
            extra = 1 if (opts.get("control_after_generate") or name in ("seed", "noise_seed")) and kind == "INT" else 0
            extra += 1 if opts.get("image_upload") else 0
            out.append((name, opts, extra))
    return out


def ui_to_api(workflow: dict, node_classes: dict) -> dict:
    """API prompt {id: {"class_type", "inputs"}} from a UI workflow; muted/bypassed nodes are left out."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        cls = node_classes.get(node["type"])
        if cls is None:
            raise KeyError(f"workflow uses node type {node['type']!r}, which the host does not know")
        inputs = {}
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        pos = 0
        for name, _, extra in widget_names(cls):
            if pos >= len(values):
                break
            if name not in linked:
                inputs[name] = values[pos]
            pos += 1 + extra
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                _, src, src_slot, _, _, _ = links[inp["link"]]
                inputs[inp["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
