"""Writes example_workflows/*.json (ComfyUI UI format) and their .jpg thumbnails, plus the sample photo.

Run from the repo root: python scripts/make_workflows.py (add --toy-thumbnail to refresh the toy workflow's
thumbnail from a real run of it on the host). The workflows are data; this script keeps
them consistent with each other (same layout, same widget order as the nodes' schemas).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "example_workflows"
SAMPLE_NAME = "ledits_sample.png"

# (type, outputs [(name, type)], widgets_values); inputs are given per link below.
NODE_OUTPUTS = {
    "CheckpointLoaderSimple": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "LoadImage": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
    "VAEEncode": [("LATENT", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "SaveImage": [],
    "LeditsInversion": [("inversion", "LEDITS_INVERSION")],
    "LeditsConceptEdit": [("concepts", "LEDITS_CONCEPTS")],
    "LeditsSampler": [("latent", "LATENT"), ("masks", "LEDITS_MASKS")],
    "LeditsMaskPreview": [("preview", "IMAGE"), ("mask", "MASK")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "LeditsPromptEdit": [("prompt_edit", "LEDITS_PROMPT_EDIT")],
    "LeditsToyModel": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
}
# Thumbnail labels only: the workflows carry no node titles, so the UI shows each node's display name in
# the user's language (locales/).
TITLES = {"LeditsInversion": "LEDITS Inversion", "LeditsConceptEdit": "LEDITS Concept Edit",
          "LeditsSampler": "LEDITS Sampler", "LeditsMaskPreview": "LEDITS Mask Preview",
          "LeditsPromptEdit": "LEDITS Prompt Edit", "LeditsToyModel": "LEDITS Toy Model"}


# Where each checkpoint the example workflows name comes from, written into the loader's properties the way the
# host's own templates do ("models": name, url, directory), so the frontend's missing-models dialog says what
# to download and which models/ folder it goes to. The toy workflow loads no file and lists none.
MODEL_SOURCES = {
    "v1-5-pruned-emaonly-fp16.safetensors":
        "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
        "v1-5-pruned-emaonly-fp16.safetensors?download=true",
    "sd_xl_base_1.0.safetensors":
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
        "sd_xl_base_1.0.safetensors?download=true",
    # the flow-matching transformers: the single-file checkpoints (model, text encoders, VAE) of the host's templates
    "sd3.5_large_fp8_scaled.safetensors":
        "https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/sd3.5_large_fp8_scaled.safetensors",
    "flux1-dev-fp8.safetensors": "https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev-fp8.safetensors",
    "flux1-schnell-fp8.safetensors":
        "https://huggingface.co/Comfy-Org/flux1-schnell/resolve/main/flux1-schnell-fp8.safetensors?download=true",
}
SD15 = "v1-5-pruned-emaonly-fp16.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
SD35 = "sd3.5_large_fp8_scaled.safetensors"
FLUX_DEV = "flux1-dev-fp8.safetensors"
FLUX_SCHNELL = "flux1-schnell-fp8.safetensors"
# Inversion settings by checkpoint where they differ from the UNets' (50 steps, karras): the flow models take the
# `simple` scheduler of the host's own flow workflows, and the step counts of its templates (schnell is distilled
# for few steps). Not tuned on edits: no trained SD3/Flux weights can be had where this pack is tested.
INVERSION = {SD35: {"steps": 28, "scheduler": "simple"}, FLUX_DEV: {"steps": 28, "scheduler": "simple"},
             FLUX_SCHNELL: {"steps": 8, "scheduler": "simple"}}


def checkpoint_loader(g, ckpt):
    """A CheckpointLoaderSimple naming its file and where to get it (properties.models, as the host's templates)."""
    loader = g.add("CheckpointLoaderSimple", (20, 40), [ckpt], size=(320, 100))
    g.nodes[loader - 1]["properties"]["models"] = [
        {"name": ckpt, "url": MODEL_SOURCES[ckpt], "directory": "checkpoints"}]
    return loader


class Graph:
    """A tiny builder for the UI workflow format (nodes with links, widgets_values in schema order)."""

    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, node_type, pos, widgets, inputs=(), size=(320, 180)):
        node_id = len(self.nodes) + 1
        node = {"id": node_id, "type": node_type, "pos": list(pos), "size": list(size), "flags": {},
                "order": node_id - 1, "mode": 0, "inputs": [],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i}
                            for i, (n, t) in enumerate(NODE_OUTPUTS[node_type])],
                "properties": {"Node name for S&R": node_type}, "widgets_values": list(widgets)}
        self.nodes.append(node)
        for slot, (name, (src, src_slot)) in enumerate(inputs):
            link_id = len(self.links) + 1
            src_node = self.nodes[src - 1]
            link_type = src_node["outputs"][src_slot]["type"]
            self.links.append([link_id, src, src_slot, node_id, slot, link_type])
            src_node["outputs"][src_slot]["links"].append(link_id)
            node["inputs"].append({"name": name, "type": link_type, "link": link_id})
        return node_id

    def to_json(self, title):
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "info": {"name": title}}, "version": 0.4}


def edit_workflow(ckpt, concepts, seed=42, preview=True):
    g = Graph()
    loader = checkpoint_loader(g, ckpt)
    image = g.add("LoadImage", (20, 200), [SAMPLE_NAME, "image"], size=(320, 320))
    latent = g.add("VAEEncode", (380, 400), [], [("pixels", (image, 0)), ("vae", (loader, 2))], size=(200, 50))
    settings = {"steps": 50, "scheduler": "karras", **INVERSION.get(ckpt, {})}
    inversion = g.add("LeditsInversion", (380, 40), [settings["steps"], 0.15, "dpmpp_2m_sde", settings["scheduler"],
                                                     seed, "fixed", 3.5],
                      [("model", (loader, 0)), ("clip", (loader, 1)), ("latent", (latent, 0))], size=(320, 320))
    previous = None
    for i, (text, scale, threshold, reverse) in enumerate(concepts):
        inputs = [("clip", (loader, 1))] + ([("previous", (previous, 0))] if previous else [])
        previous = g.add("LeditsConceptEdit", (740, 40 + 340 * i), [text, scale, threshold, reverse, 0.0, 1.0],
                         inputs, size=(320, 310))
    sampler_inputs = [("model", (loader, 0)), ("inversion", (inversion, 0))]
    if previous:
        sampler_inputs.append(("concepts", (previous, 0)))
    sampler = g.add("LeditsSampler", (1100, 40), ["intersect", False], sampler_inputs, size=(300, 330))
    decoded = g.add("VAEDecode", (1100, 420), [], [("samples", (sampler, 0)), ("vae", (loader, 2))], size=(200, 50))
    g.add("SaveImage", (1460, 40), ["ledits_edit"], [("images", (decoded, 0))], size=(360, 380))
    if preview and previous:
        g.add("LeditsMaskPreview", (1100, 520), ["final", 0, -1],
              [("masks", (sampler, 1)), ("image", (image, 0))], size=(300, 340))
    return g


def prompt_edit_workflow(ckpt, caption, target, blend_words, steps=50, seed=42):
    """Prompt-to-Prompt on the photo: the caption encoded as the inversion's source, the Prompt Edit's source
    the same text, its output into the Sampler's prompt_edit; the local-blend mask in the Mask Preview."""
    g = Graph()
    loader = checkpoint_loader(g, ckpt)
    image = g.add("LoadImage", (20, 200), [SAMPLE_NAME, "image"], size=(320, 320))
    latent = g.add("VAEEncode", (380, 560), [], [("pixels", (image, 0)), ("vae", (loader, 2))], size=(200, 50))
    source = g.add("CLIPTextEncode", (380, 40), [caption], [("clip", (loader, 1))], size=(320, 140))
    inversion = g.add("LeditsInversion", (380, 220), [steps, 0.15, "dpmpp_2m_sde", "karras", seed, "fixed", 3.5],
                      [("model", (loader, 0)), ("clip", (loader, 1)), ("latent", (latent, 0)),
                       ("source", (source, 0))], size=(320, 320))
    edit = g.add("LeditsPromptEdit", (740, 40), [caption, target, 7.5, 0.8, 0.4, "", blend_words, 0.3],
                 [("clip", (loader, 1))], size=(340, 460))
    sampler = g.add("LeditsSampler", (1120, 40), ["intersect", False], [("model", (loader, 0)), ("inversion", (inversion, 0)),
                                                                ("prompt_edit", (edit, 0))], size=(300, 330))
    decoded = g.add("VAEDecode", (1120, 420), [], [("samples", (sampler, 0)), ("vae", (loader, 2))], size=(200, 50))
    g.add("SaveImage", (1480, 40), ["ledits_edit"], [("images", (decoded, 0))], size=(360, 380))
    g.add("LeditsMaskPreview", (1120, 520), ["final", 0, -1], [("masks", (sampler, 1)), ("image", (image, 0))],
          size=(300, 340))
    return g


TOY_SCENE_NAME = "ledits_toy_scene.png"
TOY_TITLE = "LEDITS++: try it without a checkpoint (toy model, coloured shapes)"


def toy_settings():
    """(caption, concepts) of the toy workflow: scripts/ledits_edit.py's demo, on toy_world.demo_scene() (a drawn
    scene, never used in training) at toy_eval's REMOVE and ALTER (the semantic tests' settings); its samplers keep
    the photo outside the masks as the tests do (toy_eval.KEEP_PHOTO, toy_workflow())."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import toy_eval
    import toy_world

    scene, target = toy_world.demo_scene()
    obj = scene.objects[target]
    new = f"{toy_eval.new_colour_for(scene)} {obj.shape}"
    return scene.caption, [(obj.words, toy_eval.REMOVE["scale"], toy_eval.REMOVE["threshold"], True),
                           (new, toy_eval.ALTER["scale"], toy_eval.ALTER["threshold"], False)]


def toy_workflow(caption, concepts, steps=20, seed=7, keep_photo=None):
    """The toy model (LEDITS Toy Model node) on a held-out toy scene: its caption as the inversion's source, then
    one removal and one alteration of the same object, each with its own sampler on the one inversion (on this
    small model two concepts in one sampler interfere), each result saved and its mask shown over the scene.
    ``keep_photo``: the samplers' keep_photo_outside_masks (default toy_eval.KEEP_PHOTO, as the semantic tests)."""
    if keep_photo is None:
        sys.path.insert(0, str(ROOT / "scripts"))
        import toy_eval

        keep_photo = toy_eval.KEEP_PHOTO
    g = Graph()
    loader = g.add("LeditsToyModel", (20, 40), [], size=(320, 120))
    image = g.add("LoadImage", (20, 200), [TOY_SCENE_NAME, "image"], size=(320, 320))
    latent = g.add("VAEEncode", (380, 560), [], [("pixels", (image, 0)), ("vae", (loader, 2))], size=(200, 50))
    source = g.add("CLIPTextEncode", (380, 40), [caption], [("clip", (loader, 1))], size=(320, 140))
    inversion = g.add("LeditsInversion", (380, 220), [steps, 0.15, "dpmpp_2m_sde", "karras", seed, "fixed", 3.5],
                      [("model", (loader, 0)), ("clip", (loader, 1)), ("latent", (latent, 0)),
                       ("source", (source, 0))], size=(320, 320))
    for i, (text, scale, threshold, reverse) in enumerate(concepts):
        y = 40 + 420 * i
        concept = g.add("LeditsConceptEdit", (740, y), [text, scale, threshold, reverse, 0.0, 1.0],
                        [("clip", (loader, 1))], size=(320, 310))
        sampler = g.add("LeditsSampler", (1100, y), ["intersect", keep_photo], [("model", (loader, 0)),
                                                                   ("inversion", (inversion, 0)),
                                                                   ("concepts", (concept, 0))], size=(300, 330))
        decoded = g.add("VAEDecode", (1100, y + 350), [], [("samples", (sampler, 0)), ("vae", (loader, 2))],
                        size=(200, 50))
        g.add("SaveImage", (1440, y), ["ledits_edit"], [("images", (decoded, 0))], size=(300, 380))
        g.add("LeditsMaskPreview", (1780, y), ["final", 0, -1], [("masks", (sampler, 1)), ("image", (image, 0))],
              size=(300, 380))
    return g


def toy_thumbnail(workflow_path, path):
    """The toy workflow's thumbnail from a real run (needs the host): scene | each edit | each edit's masks."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    import hostenv
    from workflow_api import ui_to_api

    nodes = hostenv.import_host()
    hostenv.load_pack()
    import folder_paths

    Image.open(ROOT / "assets" / TOY_SCENE_NAME).save(Path(folder_paths.get_input_directory()) / TOY_SCENE_NAME)
    prompt = ui_to_api(json.loads(workflow_path.read_text()), nodes.NODE_CLASS_MAPPINGS)
    out = hostenv.run_prompt(prompt, outputs=None)
    of_kind = {k: [out[i][0][:1] for i, n in sorted(prompt.items(), key=lambda kv: int(kv[0]))
                   if n["class_type"] == k] for k in ("LoadImage", "VAEDecode", "LeditsMaskPreview")}
    before = of_kind["LoadImage"][0]
    h = before.shape[1]
    masks = [torch.nn.functional.interpolate(m.movedim(-1, 1), size=(h, round(m.shape[2] * h / m.shape[1])),
                                             mode="bilinear").movedim(1, -1) for m in of_kind["LeditsMaskPreview"]]
    gap = torch.ones((1, h, 4, 3))
    panels = [before] + of_kind["VAEDecode"] + masks
    sheet = torch.cat([p for panel in panels for p in (panel, gap)][:-1], dim=2)[0].clamp(0, 1).numpy()
    img = Image.fromarray((sheet * 255).round().astype(np.uint8))
    img.resize((img.width * 2, img.height * 2), Image.NEAREST).convert("RGB").save(path, quality=90)


def toy_scene(path):
    """The toy workflow's input: the demo's held-out toy scene (scripts/toy_world.py, demo_scene())."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import toy_world

    toy_world.demo_scene()[0].pil().save(path)


def thumbnail(workflow, path, title):
    """A small picture of the graph: one box per node, links as lines, the title on top."""
    img = Image.new("RGB", (480, 270), (32, 34, 38))
    draw = ImageDraw.Draw(img)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    xs = [n["pos"][0] for n in nodes.values()] + [n["pos"][0] + n["size"][0] for n in nodes.values()]
    ys = [n["pos"][1] for n in nodes.values()] + [n["pos"][1] + n["size"][1] for n in nodes.values()]
    scale = min(460 / (max(xs) - min(xs)), 220 / (max(ys) - min(ys)))

    def box(n):
        x0 = 10 + (n["pos"][0] - min(xs)) * scale
        y0 = 40 + (n["pos"][1] - min(ys)) * scale
        return x0, y0, x0 + n["size"][0] * scale, y0 + n["size"][1] * scale

    for _, src, _, dst, _, _ in workflow["links"]:
        a, b = box(nodes[src]), box(nodes[dst])
        draw.line([(a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2)], fill=(140, 140, 160), width=2)
    for n in nodes.values():
        ours = n["type"].startswith("Ledits")
        draw.rectangle(box(n), fill=(70, 50, 110) if ours else (60, 62, 70), outline=(200, 200, 210))
        draw.text((box(n)[0] + 3, box(n)[1] + 2), TITLES.get(n["type"], n["type"])[:22], fill=(235, 235, 240))
    draw.text((10, 10), title, fill=(255, 255, 255))
    img.save(path, quality=85)


def sample_photo(path, size=512):
    """A synthetic 'photo' (a face-like figure on a gradient) to run the workflows on; no real photo is shipped."""
    img = Image.new("RGB", (size, size))
    px = img.load()
    for y in range(size):
        for x in range(size):
            px[x, y] = (int(90 + 80 * y / size), int(140 + 60 * math.sin(x / 60)), int(200 - 90 * y / size))
    d = ImageDraw.Draw(img)
    s = size / 512
    d.ellipse([156 * s, 96 * s, 356 * s, 336 * s], fill=(224, 180, 150))
    d.ellipse([206 * s, 180 * s, 236 * s, 206 * s], fill=(40, 40, 40))
    d.ellipse([276 * s, 180 * s, 306 * s, 206 * s], fill=(40, 40, 40))
    d.arc([216 * s, 230 * s, 296 * s, 290 * s], 20, 160, fill=(120, 40, 40), width=max(1, int(5 * s)))
    d.rectangle([136 * s, 336 * s, 376 * s, 512 * s], fill=(50, 70, 130))
    img.save(path)


WORKFLOWS = {
    "ledits_edit_photo_sd15": ("LEDITS++: edit a photo (SD1.5)", SD15,
                               [("sunglasses", 6.0, 0.9, False), ("smile", 4.0, 0.9, False)]),
    "ledits_edit_photo_sdxl": ("LEDITS++: edit a photo (SDXL)", SDXL,
                               [("sunglasses", 6.0, 0.9, False), ("beard", 5.0, 0.85, True)]),
    "ledits_reconstruct_only": ("LEDITS++: invert and reconstruct (no edit)", SD15, []),
    "ledits_edit_photo_sd35": ("LEDITS++: edit a photo (SD3.5)", SD35,
                               [("sunglasses", 6.0, 0.9, False), ("smile", 4.0, 0.9, False)]),
    "ledits_edit_photo_flux_dev": ("LEDITS++: edit a photo (Flux.1-dev)", FLUX_DEV,
                                   [("sunglasses", 6.0, 0.9, False), ("smile", 4.0, 0.9, False)]),
    "ledits_edit_photo_flux_schnell": ("LEDITS++: edit a photo (Flux.1-schnell)", FLUX_SCHNELL,
                                       [("sunglasses", 6.0, 0.9, False), ("smile", 4.0, 0.9, False)]),
}
FLOW_FAMILIES = {SD35: "sd35m", FLUX_DEV: "flux_dev", FLUX_SCHNELL: "flux_schnell"}  # the tests' tiny stand-ins


PROMPT_EDITS = {
    "ledits_prompt_edit_sd15": ("LEDITS++: rewrite the caption (Prompt-to-Prompt, SD1.5)",
                                SD15, "a photo of a smiling man in a blue shirt",
                                "a photo of a smiling woman in a blue shirt", "man woman"),
}


def main():
    OUT.mkdir(exist_ok=True)
    for name, (title, ckpt, concepts) in WORKFLOWS.items():
        workflow = edit_workflow(ckpt, concepts).to_json(title)
        (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n")
        thumbnail(workflow, OUT / f"{name}.jpg", title)
    for name, (title, ckpt, caption, target, blend_words) in PROMPT_EDITS.items():
        workflow = prompt_edit_workflow(ckpt, caption, target, blend_words).to_json(title)
        (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n")
        thumbnail(workflow, OUT / f"{name}.jpg", title)
    caption, concepts = toy_settings()
    toy_path = OUT / "ledits_toy_shapes.json"
    toy_path.write_text(json.dumps(toy_workflow(caption, concepts).to_json(TOY_TITLE), indent=2) + "\n")
    sample_photo(ROOT / "assets" / SAMPLE_NAME)
    toy_scene(ROOT / "assets" / TOY_SCENE_NAME)
    if "--toy-thumbnail" in sys.argv:
        toy_thumbnail(toy_path, OUT / "ledits_toy_shapes.jpg")


if __name__ == "__main__":
    main()
