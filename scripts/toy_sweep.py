"""Choose the toy model's edit settings on the validation scenes (issue 18): never on the test scenes.

Each setting of a grid is run on validation scenes 0..N-1 of toy_world's "val" stream, once per object of
each scene, and scored by toy_eval's per-scene success (toy_eval.SUCCESS). Inversions are shared by every
setting with the same skip and source. One JSON line per (setting, scene, object) goes to --out, so that a
stopped sweep resumes where it was; the summary ranks the settings by successes.

    python scripts/toy_sweep.py --kind removal --scales 25,40,60 --thresholds 0.9,0.95 \\
        --skips 0,0.15 --sources caption,none --scenes 10 --out out/sweep_removal.jsonl

``--kind``: removal (-object), alteration (+new colour on the object), swap (the prompt edit's colour word;
its scale is --scales, its cross/self replace --cross and --self, its source is always the caption).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostenv  # noqa: E402
import toy_eval  # noqa: E402
import toy_world  # noqa: E402

SPLIT = "val"  # settings are chosen here only; the test scenes are for measuring what was chosen


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", required=True, choices=("removal", "alteration", "swap"))
    p.add_argument("--model", default="sd15", choices=toy_eval.MODELS,
                   help="the toy UNet or the toy flow transformer (its steps, scheduler and source scale)")
    p.add_argument("--scales", type=floats, required=True)
    p.add_argument("--thresholds", type=floats, default=[0.9], help="concept edits: the mask threshold")
    p.add_argument("--skips", type=floats, default=None, help="the inversion's skip (default: the model's)")
    p.add_argument("--sources", default="caption", help="comma list of caption / none: the inversion's source")
    p.add_argument("--cross", type=floats, default=[toy_eval.SWAP["cross_replace"]], help="swap: cross_replace")
    p.add_argument("--self", dest="self_", type=floats, default=[toy_eval.SWAP["self_replace"]],
                   help="swap: self_replace")
    p.add_argument("--object-mask", action="store_true",
                   help="concept edits: give the concept the edited object's region (dilated 4 px) as its mask, as a "
                        "user would from a mask node: how often the edit lands where the place is known")
    p.add_argument("--keep-photo", action="store_true",
                   help="concept edits: the sampler's keep_photo_outside_masks (the photo's own latent wherever the "
                        "edit's masks have not acted)")
    p.add_argument("--mask-modes", default="intersect", help="concept edits: comma list of the sampler's mask modes")
    p.add_argument("--scenes", type=int, default=10, help="validation scenes 0..N-1, each object edited once")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--weights", type=Path, default=None,
                   help="weights of --model's kind other than the committed ones (a training run's export)")
    p.add_argument("--palette", default="rgb", choices=sorted(toy_world.PALETTES),
                   help="the world's colours (toy_world.PALETTES): those the --weights were trained on")
    p.add_argument("--out", type=Path, required=True, help="JSON lines, appended (the sweep resumes from it)")
    args = p.parse_args(argv)
    if args.skips is None:
        args.skips = [toy_eval.SETTINGS[args.model].skip]
    if args.kind == "swap" and not toy_eval.SETTINGS[args.model].swap:
        p.error(f"--kind swap: the pack's Prompt Edit takes UNets only, not the {args.model} toy model")
    return args


def settings(args) -> list[dict]:
    sources = [s for s in args.sources.split(",") if s]
    for s in sources:
        if s not in ("caption", "none"):
            raise SystemExit(f"--sources: caption or none, not {s!r}")
    if args.kind == "swap":
        if sources != ["caption"]:
            raise SystemExit("--kind swap edits the caption: its inversion's source is the caption (--sources caption)")
        return [{"skip": k, "source": "caption", "scale": s, "cross_replace": c, "self_replace": r}
                for k, s, c, r in itertools.product(args.skips, args.scales, args.cross, args.self_)]
    extra = {"object_mask": True} if args.object_mask else {}
    if args.keep_photo:
        extra["keep_photo"] = True
    modes = [m for m in args.mask_modes.split(",") if m]
    return [{"skip": k, "source": src, "scale": s, "threshold": t, **extra,
             **({"mask_mode": m} if m != "intersect" else {})}  # intersect: keys as before, so old sweeps resume
            for k, src, s, t, m in itertools.product(args.skips, sources, args.scales, args.thresholds, modes)]


def key_of(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True)


def invert(pack, model, clip, latent, scene, skip: float, source: str, settings: toy_eval.Settings):
    """toy_eval's inversion (the model's steps, scheduler and source scale) at this skip and source."""
    caption = scene.caption if source == "caption" else None
    return toy_eval.invert(pack, model, clip, latent, caption, settings, skip=skip)


@torch.no_grad()
def score(kind: str, setting: dict, pack, model, clip, vae, scene, inv, before_img, target_index: int) -> dict:
    target, other = scene.objects[target_index], scene.objects[1 - target_index]
    if kind == "swap":
        caption, new = toy_eval.swap_caption(scene, target_index)
        edit = pack.prompt.make_prompt_edit(clip, scene.caption, caption, scale=setting["scale"],
                                            cross_replace=setting["cross_replace"],
                                            self_replace=setting["self_replace"])
        out, _ = pack.sampler.run_edit(model, inv, None, "intersect", edit)
        img = toy_eval.decode(vae, out)
        fig = {"covered": toy_eval.covered(img, target, new), "other_kept": toy_eval.kept(before_img, img, other)}
        return {**fig, "success": toy_eval.recoloured(**fig)}
    concept = {"scale": setting["scale"], "threshold": setting["threshold"],
               "mask_mode": setting.get("mask_mode", "intersect"), "keep_photo": bool(setting.get("keep_photo"))}
    if setting.get("object_mask"):
        concept["mask"] = torch.from_numpy(toy_world.dilate(target.mask, 4).astype("float32"))[None]
    if kind == "removal":
        out, _, _ = toy_eval.edit(pack, model, clip, inv, target.words, True, **concept)
        img = toy_eval.decode(vae, out)
        before = toy_world.colour_pixels(before_img, target.colour).sum()
        after = toy_world.colour_pixels(img, target.colour).sum()
        fig = {"colour_drop": 1.0 - float(after) / max(float(before), 1.0),
               "cleared": float(toy_world.background_pixels(img)[target.mask].mean()),
               "other_kept": toy_eval.kept(before_img, img, other)}
        return {**fig, "success": toy_eval.removed(**fig)}
    new = toy_eval.new_colour_for(scene)
    out, _, _ = toy_eval.edit(pack, model, clip, inv, f"{new} {target.shape}", False, **concept)
    img = toy_eval.decode(vae, out)
    fig = {"covered": toy_eval.covered(img, target, new), "other_kept": toy_eval.kept(before_img, img, other)}
    return {**fig, "success": toy_eval.recoloured(**fig)}


def same_run(r: dict, kind: str, model: str, weights: str | None = None, palette: str = "rgb") -> bool:
    """Whether a row is of this kind, model, weights (None: the committed ones) and palette. Rows from before
    --model are the UNet's, from before --weights / --palette the committed weights' in the rgb palette."""
    return (r["kind"] == kind and r.get("model", "sd15") == model and r.get("weights") == weights
            and r.get("palette", "rgb") == palette)


def done_runs(path: Path, kind: str, model: str, weights: str | None = None,
              palette: str = "rgb") -> set[tuple[str, int, int]]:
    """(setting, scene, target) of the rows of this kind, model, weights and palette already in ``path``."""
    if not path.exists():
        return set()
    out = set()
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if same_run(r, kind, model, weights, palette):
            out.add((key_of(r["setting"]), r["scene"], r["target"]))
    return out


def summarise(path: Path, kind: str, model: str, weights: str | None = None,
              palette: str = "rgb") -> list[tuple[int, int, str]]:
    hits, runs = defaultdict(int), defaultdict(int)
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if same_run(r, kind, model, weights, palette):
            k = key_of(r["setting"])
            runs[k] += 1
            hits[k] += bool(r["success"])
    return sorted(((hits[k], runs[k], k) for k in runs), reverse=True)


def by_colour(path: Path, kind: str, model: str, setting: str, weights: str | None = None,
              palette: str = "rgb") -> dict[str, tuple[int, int]]:
    """Successes of one setting (key_of()) by the edited object's colour ("target red") and by the other object's
    ("other green"): (successes, runs) each. Which objects an edit lands on, not only how often."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if not same_run(r, kind, model, weights, palette) or key_of(r["setting"]) != setting:
            continue
        scene = toy_world.test_scene(r["scene"], SPLIT)
        for role, obj in (("target", scene.objects[r["target"]]), ("other", scene.objects[1 - r["target"]])):
            out[f"{role} {obj.colour}"][0] += bool(r["success"])
            out[f"{role} {obj.colour}"][1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def main(argv=None) -> int:
    args = parse_args(argv)
    toy_world.use_palette(args.palette)
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = settings(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run = {"weights": str(args.weights) if args.weights is not None else None, "palette": args.palette}
    done = done_runs(args.out, args.kind, args.model, **run)
    hostenv.import_host()
    pack = toy_eval.Pack.load()
    model, clip, vae = toy_eval.load(args.model, args.weights)
    base = toy_eval.SETTINGS[args.model]
    for i in range(args.scenes):
        scene = toy_world.test_scene(i, SPLIT)
        latent = toy_eval.encode(vae, scene)
        before_img = toy_eval.decode(vae, latent)
        todo = [(s, t) for s in grid for t in (0, 1) if (key_of(s), i, t) not in done]
        inversions = {}
        for setting, target in todo:
            inv_key = (setting["skip"], setting["source"])
            if inv_key not in inversions:
                inversions[inv_key] = invert(pack, model, clip, latent, scene, *inv_key, base)
            fig = score(args.kind, setting, pack, model, clip, vae, scene, inversions[inv_key], before_img, target)
            with open(args.out, "a") as f:
                f.write(json.dumps({"kind": args.kind, "model": args.model, "setting": setting, "scene": i,
                                    "target": target, **{k: v for k, v in run.items() if v not in (None, "rgb")},
                                    **fig}) + "\n")
        print(f"scene {i} done ({len(todo)} runs)", flush=True)
    print(f"{args.kind}: successes over {args.scenes} validation scenes x 2 objects, best first")
    ranked = summarise(args.out, args.kind, args.model, **run)
    for hits, runs, k in ranked:
        print(f"  {hits:3d} of {runs}  {k}")
    for hits, _runs, k in ranked:  # every setting tied for the best
        if hits < ranked[0][0]:
            break
        split = by_colour(args.out, args.kind, args.model, k, **run)
        print(f"best, by colour, {k}: " + ", ".join(f"{c} {h} of {n}" for c, (h, n) in split.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
