"""Headless LEDITS++ edit through ComfyUI: invert a photo, apply concept edits, save the result and masks.

    python scripts/ledits_edit.py --out out/                         # demo: the toy model, a held-out scene
    python scripts/ledits_edit.py --ckpt model.safetensors --image photo.png --edit "+sunglasses" \
        --edit "-beard:4:0.85" --out out/
    python scripts/ledits_edit.py --random-model sd15 --out out/     # mechanics only: random weights

The demo runs the small model trained in this repository on a toy world (coloured circles and squares,
128 px; scripts/train_toy.py) on a scene it never saw: one inversion, then one removal and one
alteration of the same object, each in its own LEDITS Sampler (--each). It writes input, reconstructed,
edited_N, masks_N, latent_change_N and a before | after 1 | after 2 | masks 1 | masks 2 sheet, and prints
the scene's semantic figures (scripts/toy_eval.py). It is a toy world, not a photo model.

An --edit is [+|-]text[:scale[:threshold]]; '-' removes the concept. The graph runs in-process on the
host's own executor, exactly as the nodes run in the UI. The host is looked for at $COMFYUI_PATH, else
~/ComfyUI, else ../shared/ComfyUI next to this repository (scripts/hostenv.py).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import hostenv  # noqa: E402

SAMPLE = HERE.parent / "assets" / "ledits_sample.png"
RANDOM_EDITS = ["+sunglasses:8:0.8", "-smile:6:0.9"]
# toy_world.test_scene(TOY_SCENE), "a red square and a blue circle": held out from training; one of the semantic
# tests' 20 scenes, chosen as typical of what works (README, Semantics: how often each edit lands)
TOY_SCENE = 6
log = logging.getLogger("ledits_edit")


def parse_edit(spec: str) -> dict:
    """'+text[:scale[:threshold]]' -> concept settings; '-' means remove (reverse)."""
    reverse = spec.startswith("-")
    parts = spec.lstrip("+-").split(":")
    if not parts[0].strip():
        raise SystemExit(f"--edit {spec!r}: no text; write e.g. --edit '+sunglasses' or --edit '-beard:4:0.85'")
    try:
        scale = float(parts[1]) if len(parts) > 1 and parts[1] else 5.0
        threshold = float(parts[2]) if len(parts) > 2 and parts[2] else 0.9
    except ValueError:
        raise SystemExit(f"--edit {spec!r}: scale and threshold must be numbers, e.g. '-beard:4:0.85'") from None
    return {"text": parts[0].strip(), "scale": scale, "threshold": threshold, "reverse": reverse}


def target_size(image: Path, longest: int, multiple: int = 8) -> tuple[int, int]:
    """(width, height) with the longer side = longest and both multiples of the VAE's downscale, keeping the aspect."""
    w, h = Image.open(image).size
    k = longest / max(w, h)
    m = multiple
    return max(m, int(round(w * k / m)) * m), max(m, int(round(h * k / m)) * m)


def build_prompt(args, image_name: str, size: tuple[int, int], edits: list[dict]) -> dict:
    """The API-format graph: load, scale, encode, invert, chained concepts, sample, decode, mask preview."""
    if args.ckpt:
        loader = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": Path(args.ckpt).name}}
    elif args.random_model:
        loader = {"class_type": hostenv.RANDOM_LOADER, "inputs": {"family": args.random_model, "size": "tiny",
                                                                   "seed": 0}}
    else:
        loader = {"class_type": "LeditsToyModel", "inputs": {}}
    prompt = {
        "ckpt": loader,
        "load": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "scale": {"class_type": "ImageScale", "inputs": {"image": ["load", 0], "upscale_method": "bicubic",
                                                         "width": size[0], "height": size[1], "crop": "disabled"}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["scale", 0], "vae": ["ckpt", 2]}},
        "invert": {"class_type": "LeditsInversion", "inputs": {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], "latent": ["encode", 0], "steps": args.steps,
            "skip": args.skip, "sampler": args.sampler, "scheduler": args.scheduler, "seed": args.seed,
            "source_scale": 3.5}},
    }
    if args.source:
        prompt["source"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": args.source}}
        prompt["invert"]["inputs"]["source"] = ["source", 0]
    for k, group in enumerate(edit_groups(edits, args.each)):
        previous = None
        for i, edit in enumerate(group):
            inputs = {"clip": ["ckpt", 1], "text": edit["text"], "scale": edit["scale"],
                      "threshold": edit["threshold"], "reverse": edit["reverse"], "warmup": 0.0, "cooldown": 1.0}
            if previous:
                inputs["previous"] = [previous, 0]
            previous = f"concept{k}_{i}"
            prompt[previous] = {"class_type": "LeditsConceptEdit", "inputs": inputs}
        sampler = {"model": ["ckpt", 0], "inversion": ["invert", 0], "mask_mode": args.mask_mode}
        if previous:
            sampler["concepts"] = [previous, 0]
        sample, decode, preview = node_names(k)
        prompt[sample] = {"class_type": "LeditsSampler", "inputs": sampler}
        prompt[decode] = {"class_type": "VAEDecode", "inputs": {"samples": [sample, 0], "vae": ["ckpt", 2]}}
        prompt[preview] = {"class_type": "LeditsMaskPreview", "inputs": {
            "masks": [sample, 1], "image": ["scale", 0], "which": "final", "start_step": 0, "end_step": -1}}
    prompt["reconstruct"] = {"class_type": "LeditsSampler", "inputs": {"model": ["ckpt", 0], "inversion": ["invert", 0],
                                                                        "mask_mode": args.mask_mode}}
    prompt["decode_rec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["reconstruct", 0], "vae": ["ckpt", 2]}}
    return prompt


def edit_groups(edits: list[dict], each: bool) -> list[list[dict]]:
    """The edits of each LEDITS Sampler: all in one, or (--each) one sampler per edit on the same inversion."""
    return [[edit] for edit in edits] if each and edits else [edits]


def node_names(k: int) -> tuple[str, str, str]:
    """The sampler, decode and mask preview nodes of edit group k (one group unless --each)."""
    return ("sample", "decode", "preview") if k == 0 else (f"sample{k}", f"decode{k}", f"preview{k}")


def file_suffix(k: int, groups: int) -> str:
    return f"_{k + 1}" if groups > 1 else ""


def save(image_tensor, path: Path) -> None:
    """Save the first image of a host IMAGE batch (B, H, W, 3) in [0, 1] as PNG."""
    Image.fromarray((image_tensor[0].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)).save(path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint file (SD1.x, SD2.x or SDXL); default: the toy model (demo)")
    p.add_argument("--random-model", choices=["sd15", "sd2v", "sdxl"],
                   help="instead: a tiny model of this family with random weights (mechanics only)")
    p.add_argument("--image", type=Path, default=None,
                   help="photo to edit (default: a held-out toy scene; with --ckpt/--random-model the bundled sample)")
    p.add_argument("--edit", action="append", help="[+|-]text[:scale[:threshold]]; repeat for several")
    p.add_argument("--source", default=None, help="optional prompt describing the photo (the demo: the scene's caption)")
    p.add_argument("--size", type=int, default=None, help="longer image side in pixels (default 512; demos 128/256)")
    p.add_argument("--steps", type=int, default=None, help="steps (default 50; demos 20/12)")
    p.add_argument("--skip", type=float, default=0.15)
    p.add_argument("--sampler", default="dpmpp_2m_sde", choices=["dpmpp_2m_sde", "ddpm"])
    p.add_argument("--scheduler", default="karras")
    p.add_argument("--seed", type=int, default=None, help="inversion seed (default 0; toy demo 7)")
    p.add_argument("--mask-mode", default="intersect", choices=["intersect", "attention", "noise", "none"])
    p.add_argument("--each", action="store_true",
                   help="each --edit in its own LEDITS Sampler on the one inversion (default: all in one sampler; "
                        "the toy demo: each)")
    p.add_argument("--out", type=Path, default=Path("out"))
    args = p.parse_args(argv)
    if args.ckpt and args.random_model:
        p.error("--ckpt and --random-model exclude each other")
    return args


def toy_defaults(args):
    """The toy demo: a held-out scene, its caption as the source, one removal and one alteration of the same
    object, each in its own sampler on the one inversion (on this model two concepts in one run interfere: the
    added object tends to take the removed one's place)."""
    import toy_eval
    import toy_world

    scene = toy_world.test_scene(TOY_SCENE)
    target = scene.objects[0]
    args.steps = args.steps or toy_eval.STEPS
    args.seed = toy_eval.SEED if args.seed is None else args.seed
    if args.image is None:
        args.image = Path(tempfile.mkdtemp(prefix="ledits_toy_")) / "toy_scene.png"
        scene.pil().save(args.image)
        args.source = args.source if args.source is not None else scene.caption
        new = toy_eval.new_colour_for(scene)
        if not args.edit:
            args.each = True
        edits = args.edit or [f"-{target.words}:{toy_eval.REMOVE['scale']:g}:{toy_eval.REMOVE['threshold']:g}",
                              f"+{new} {target.shape}:{toy_eval.ALTER['scale']:g}:{toy_eval.ALTER['threshold']:g}"]
        return scene, edits
    return None, args.edit or [f"-{target.words}"]


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    toy = not (args.ckpt or args.random_model)
    if args.ckpt and not Path(args.ckpt).is_file():
        raise SystemExit(f"--ckpt {args.ckpt}: no such file")
    reason = hostenv.host_missing_reason("run this edit")
    if reason:
        raise SystemExit(f"{reason}.\nThis job runs the edit inside ComfyUI. Get ComfyUI with:\n"
                         "  git clone https://github.com/comfyanonymous/ComfyUI ~/ComfyUI\n"
                         "  pip install -r ~/ComfyUI/requirements.txt\nthen run this command again.")
    scene = None
    if toy:
        scene, specs = toy_defaults(args)
        size = args.size or 128
    else:
        args.image = args.image or SAMPLE
        args.steps = args.steps or (50 if args.ckpt else 12)
        args.seed = args.seed or 0
        specs = args.edit or RANDOM_EDITS
        size = args.size or (512 if args.ckpt else 256)
    edits = [parse_edit(e) for e in specs]
    if not args.image.is_file():
        raise SystemExit(f"--image {args.image}: no such file")
    hostenv.import_host()
    hostenv.load_pack()
    import folder_paths

    if args.ckpt:
        folder_paths.add_model_folder_path("checkpoints", str(Path(args.ckpt).resolve().parent))
    image_name = "ledits_input" + args.image.suffix
    shutil.copy(args.image, Path(folder_paths.get_input_directory()) / image_name)
    multiple = 4 if toy else 8
    prompt = build_prompt(args, image_name, target_size(args.image, size, multiple), edits)
    groups = edit_groups(edits, args.each)
    names = [node_names(k) for k in range(len(groups))]
    results = hostenv.run_prompt(prompt, outputs=[n for _, decode, preview in names for n in (decode, preview)]
                                 + ["decode_rec", "scale", "encode"])
    args.out.mkdir(parents=True, exist_ok=True)
    save(results["scale"][0], args.out / "input.png")
    save(results["decode_rec"][0], args.out / "reconstructed.png")
    for k, (sample, decode, preview) in enumerate(names):
        suffix = file_suffix(k, len(groups))
        save(results[decode][0], args.out / f"edited{suffix}.png")
        save(results[preview][0], args.out / f"masks{suffix}.png")
        save(change_map(results, sample), args.out / f"latent_change{suffix}.png")
    sheet(results, names, args.out / "sheet.png")
    log.info("edits: %s", "; ".join(", ".join(("-" if e["reverse"] else "+") + e["text"] for e in group)
                                    for group in groups))
    log.info("wrote input, edited, reconstructed, masks and latent_change .png (%s) and sheet.png in %s",
             "one of each per sampler" if len(groups) > 1 else "one sampler", args.out)
    rec, source = results["reconstruct"][0]["samples"], results["encode"][0]["samples"]
    log.info("reconstruction without edits: max abs latent error %.2e", (rec - source).abs().max().item())
    for k, (sample, _, preview) in enumerate(names):
        report(results, sample, preview, f"edit {k + 1}: " if len(groups) > 1 else "")
    note(args, toy)
    if scene is not None and not args.edit:
        scene_figures(scene)
    return 0


def sheet(results, names, path: Path) -> None:
    """before | after (each edit run) | masks (each edit run), side by side (masks scaled to the image height)."""
    import torch

    before = results["scale"][0][:1]
    h = before.shape[1]
    gap = torch.ones((1, h, max(2, h // 32), 3))
    panels = [before] + [results[decode][0][:1] for _, decode, _ in names]
    for _, _, preview in names:
        masks = results[preview][0][:1]
        if masks.shape[1] != h:
            w = round(masks.shape[2] * h / masks.shape[1])
            masks = torch.nn.functional.interpolate(masks.movedim(-1, 1), size=(h, w), mode="bilinear").movedim(1, -1)
        panels.append(masks)
    save(torch.cat([p for panel in panels for p in (panel, gap)][:-1], dim=2), path)


def scene_figures(scene) -> None:
    """The demo scene's semantic figures (scripts/toy_eval.py): each edit alone, as the semantic tests do."""
    import toy_eval

    pack = toy_eval.Pack.load()
    model, clip, vae = hostenv.import_pack_module("nodes.toy_model").load_toy_model()
    fig = toy_eval.evaluate_scene(pack, model, clip, vae, scene)
    log.info("semantic figures of this scene (%s), each edit run alone:", scene.caption)
    for line in toy_eval.describe(fig):
        log.info("  %s", line)


def change_map(results, sample: str):
    """|edited - reconstructed| in latent space, averaged over channels, scaled to [0, 1], image size: (1, H, W, 3)."""
    import torch

    edited, rec = results[sample][0]["samples"][:1], results["reconstruct"][0]["samples"][:1]
    diff = (edited - rec).abs().mean(1, keepdim=True)
    diff = diff / diff.max().clamp(min=1e-12)
    size = results["scale"][0].shape[1:3]
    diff = torch.nn.functional.interpolate(diff, size=tuple(size), mode="nearest")
    return diff[:, 0, :, :, None].expand(-1, -1, -1, 3)


def report(results, sample: str, preview: str, label: str) -> None:
    """How local one edit run was: its mean latent change inside and outside its masks."""
    import torch.nn.functional as F

    source = results["encode"][0]["samples"]
    rec, edited = results["reconstruct"][0]["samples"], results[sample][0]["samples"]
    masks = results[preview][1]
    if masks.numel():
        union = F.interpolate((masks > 0.05).float()[:, None], size=source.shape[-2:], mode="area").amax(0)[0] > 0
        change = (edited - rec).abs().mean(1)[0]
        if union.any() and (~union).any():
            log.info("%smean latent change: %.4f inside the masks, %.4f outside", label,
                     change[union].mean().item(), change[~union].mean().item())


def note(args, toy) -> None:
    if toy:
        log.info("note: this ran the toy model trained in this repository on coloured circles and squares "
                 "(128 px): the edit is real, the world is a toy; pass --ckpt for photos.")
    elif args.random_model:
        log.info("note: this ran a small model with RANDOM weights (its VAE cannot reproduce a photo either): the "
                 "files show the mechanics (exact inversion, masks, where the latent changed), not editing "
                 "quality. Pass --ckpt for a real edit.")


if __name__ == "__main__":
    sys.exit(main())
