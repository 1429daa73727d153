"""Writes the pictures of the node help pages (web/docs/images/*.png) from a real run through ComfyUI.

    python scripts/make_help_images.py

The run: the bundled photo, the pack's random-weight SD1.5 test model (scripts/random_models.py),
LEDITS Inversion once, then LEDITS Sampler runs with one concept at several thresholds and with two
concepts; the pictures are the masks the sampler used, drawn by the pack's own Mask Preview code. A
random-weight model puts its masks in arbitrary places: the pictures show how much of the image a
setting lets an edit touch and what each mask kind looks like, not where a trained model would act.
The pictures of the UI (wiring, live previews) come from the browser test (LEDITS_UPDATE_DOCS=1).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import hostenv  # noqa: E402

ROOT = HERE.parent
OUT = ROOT / "web" / "docs" / "images"
PHOTO = ROOT / "assets" / "ledits_sample.png"
SIDE = 160  # photo side in pixels: a 20x20 latent, 5x5 attention cells at 1/4 resolution
STEPS = 12
STEP = 0  # the first step: every run is still at the same latent, so the thresholds compare like for like
THRESHOLDS = (0.95, 0.9, 0.75, 0.5)
KINDS_THRESHOLD = 0.6  # lower than the default: a random model's two masks rarely overlap at 0.9


def prompt_for(concepts: list[dict], image_name: str) -> dict:
    """Load, scale, encode, invert (same inputs every time, so the host caches it), concepts, sample."""
    prompt = {
        "ckpt": {"class_type": hostenv.RANDOM_LOADER, "inputs": {"family": "sd15", "size": "tiny", "seed": 0}},
        "load": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "scale": {"class_type": "ImageScale", "inputs": {"image": ["load", 0], "upscale_method": "lanczos",
                                                         "width": SIDE, "height": SIDE, "crop": "disabled"}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["scale", 0], "vae": ["ckpt", 2]}},
        "invert": {"class_type": "LeditsInversion", "inputs": {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], "latent": ["encode", 0], "steps": STEPS, "skip": 0.15,
            "sampler": "dpmpp_2m_sde", "scheduler": "karras", "seed": 0, "source_scale": 3.5}},
    }
    previous = None
    for i, c in enumerate(concepts):
        inputs = {"clip": ["ckpt", 1], "text": c["text"], "scale": c.get("scale", 6.0),
                  "threshold": c.get("threshold", 0.9), "reverse": c.get("reverse", False), "warmup": 0.0,
                  "cooldown": 1.0}
        if previous:
            inputs["previous"] = [previous, 0]
        previous = f"concept{i}"
        prompt[previous] = {"class_type": "LeditsConceptEdit", "inputs": inputs}
    prompt["sample"] = {"class_type": "LeditsSampler", "inputs": {
        "model": ["ckpt", 0], "inversion": ["invert", 0], "concepts": [previous, 0], "mask_mode": "intersect"}}
    return prompt


def to_png(image, path: Path) -> None:
    """Save a host IMAGE (1, H, W, 3) in [0, 1]."""
    Image.fromarray((image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(path, optimize=True)


def main() -> int:
    reason = hostenv.host_missing_reason("make the help pictures")
    if reason:
        raise SystemExit(reason)
    hostenv.import_host()
    hostenv.load_pack()
    import folder_paths
    import torch

    preview = hostenv.import_pack_module("nodes.preview_node")
    shutil.copy(PHOTO, Path(folder_paths.get_input_directory()) / PHOTO.name)
    executor = hostenv.new_executor()

    def run(concepts):
        results = hostenv.run_prompt(prompt_for(concepts, PHOTO.name), outputs=["sample", "scale"],
                                     executor=executor)
        return results["scale"][0].float(), results["sample"][1]

    def panel(photo, masks, which, label, concept=0):
        agg = preview.aggregate_masks(masks, which, STEP, STEP, (SIDE, SIDE))[concept : concept + 1]
        return preview.overlay_panels(photo, agg, [label])

    OUT.mkdir(parents=True, exist_ok=True)
    # Concept Edit: how much of the image one concept may touch, threshold by threshold.
    panels = []
    for threshold in THRESHOLDS:
        photo, masks = run([{"text": "sunglasses", "threshold": threshold}])
        panels.append(panel(photo, masks, "final", f"threshold {threshold}"))
    to_png(torch.cat(panels, dim=2), OUT / "threshold.png")
    # Sampler (mask_mode) and Mask Preview (which): the two masks and their intersection.
    photo, masks = run([{"text": "sunglasses", "threshold": KINDS_THRESHOLD}])
    to_png(torch.cat([panel(photo, masks, which, which) for which in ("attention", "noise", "final")], dim=2),
           OUT / "mask_kinds.png")
    # Mask Preview: its own output for two concepts.
    photo, masks = run([{"text": "sunglasses", "threshold": KINDS_THRESHOLD},
                        {"text": "smile", "reverse": True, "threshold": KINDS_THRESHOLD}])
    agg = preview.aggregate_masks(masks, "final", STEP, STEP, (SIDE, SIDE))
    to_png(preview.overlay_panels(photo, agg, masks.labels), OUT / "mask_preview.png")
    for name in ("threshold", "mask_kinds", "mask_preview"):
        print(f"wrote {(OUT / name).with_suffix('.png').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
