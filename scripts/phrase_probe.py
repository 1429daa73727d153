"""Where the toy flow transformer looks for the phrase that recolours an object (issue 18), by colour.

The alteration "+blue square" on a red square names a colour the scene does not have. For each validation scene
(toy_world.test_scene(i, "val"), never a test scene) and each of its objects, the model is run once on a noisy
state of the scene (sigma: entry --sigma-index of the model's table, a seed per scene) with the object's own words
("red square") and once with its recolouring phrase (the colour no object has and its shape, "blue square") as
the prompt; the image queries' joint attention on the words (heads averaged, the joint blocks M1 reads) gives the
M1 share (top tenth of the cells on the object dilated one cell) and the attention ratio (on the object / on the
other object), as train_toy_flow's probe. Printed by the edited object's colour, by the other object's and by the
pair: the medians and how many runs look at the other object more (ratio < 1). First, the palette's distances in
the model's latent (palette_distances()).

    python scripts/phrase_probe.py --scenes 20                 # the committed toy flow transformer
    python scripts/phrase_probe.py --weights out/ft/x/toy_sd3.safetensors
    python scripts/phrase_probe.py --palette-only sd15     # the toy UNet's palette distances only
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostenv  # noqa: E402
import toy_eval  # noqa: E402
import toy_world  # noqa: E402
import train_toy  # noqa: E402
import train_toy_flow  # noqa: E402

CELLS = train_toy_flow.CELLS


@torch.no_grad()
def measure(model, clip, vae, scenes: int, sigma_index: int, blocks: list[int], words: str = "words"):
    """{(prompt kind, role colour): [(share, ratio), ...]}: prompt kind "own" or "phrase", role colour e.g.
    "target red" / "other green" / "red by green" (the edited object red, the other green); words "colour",
    "shape" or "words" (both summed)."""
    dm = model.model.diffusion_model
    te = clip.cond_stage_model.clip_l
    ms = model.model.model_sampling
    sigma = ms.sigmas.float()[sigma_index].view(1)
    cols = {"colour": [1], "shape": [2], "words": [1, 2]}[words]
    out: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for i in range(scenes):
        sc = toy_world.test_scene(i, "val")
        x0 = model.model.process_latent_in(toy_eval.encode(vae, sc)).float()
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(i))
        xt = (1 - sigma) * x0 + sigma * noise
        absent = toy_eval.new_colour_for(sc)
        for oi, obj in enumerate(sc.objects):
            other = sc.objects[1 - oi]
            region = toy_world.dilate(toy_world.downsample_mask(obj.mask, CELLS) > 0, 1).flatten()
            inside = torch.from_numpy(toy_world.downsample_mask(obj.mask, CELLS)).float().flatten()
            other_cov = torch.from_numpy(toy_world.downsample_mask(other.mask, CELLS)).float().flatten()
            for kind, text in (("own", obj.words), ("phrase", f"{absent} {obj.shape}")):
                ctx, pooled = train_toy_flow.text_forward(te, train_toy.token_lists(clip, [text]))
                tap = train_toy_flow.JointTap(ctx.shape[1], CELLS * CELLS)
                train_toy_flow.forward(dm, xt, sigma, ms, ctx, pooled, tap)
                amap = torch.stack([tap.maps[b][0] for b in blocks]).mean(0)[:, cols].sum(-1)
                fig = train_toy.map_figures(amap, region, inside, other_cov)
                out[(kind, f"target {obj.colour}")].append(fig)
                out[(kind, f"other {other.colour}")].append(fig)
                out[(kind, f"{obj.colour} by {other.colour}")].append(fig)
    return out


@torch.no_grad()
def palette_distances(model, vae) -> tuple[list[str], torch.Tensor]:
    """(names, distances): the palette's colours and the background, each a flat 128 px image encoded and put
    through the model's process_in, its centre's mean latent vector; Euclidean distances between them. Where a
    colour lies between two others, an edit from one of them to the other passes it."""
    names = [*toy_world.COLOURS, "background"]
    vectors = []
    for rgb in [*toy_world.COLOURS.values(), toy_world.BACKGROUND]:
        image = np.empty((toy_world.SIZE, toy_world.SIZE, 3), np.uint8)
        image[:] = rgb
        z = model.model.process_latent_in(vae.encode(torch.from_numpy(image).float()[None] / 255.0)).float()
        c = z.shape[-1] // 4
        vectors.append(z[0, :, c:-c, c:-c].mean((1, 2)))
    v = torch.stack(vectors)
    return names, torch.cdist(v, v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--sigma-index", type=int, default=700, help="entry of the model's 1000-step sigma table (0.88)")
    p.add_argument("--blocks", default="2,3", help="joint blocks, the ones M1 reads by default")
    p.add_argument("--words", default="words", choices=("words", "colour", "shape"))
    p.add_argument("--weights", type=Path, default=None, help="toy flow weights other than the committed ones")
    p.add_argument("--palette-only", default=None, choices=toy_eval.MODELS,
                   help="print only the palette's latent distances, of this toy model (the UNet's too)")
    p.add_argument("--palette", default="rgb", choices=sorted(toy_world.PALETTES),
                   help="the world's colours (toy_world.PALETTES): those the --weights were trained on")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    toy_world.use_palette(args.palette)
    if args.threads:
        torch.set_num_threads(args.threads)
    hostenv.import_host()
    hostenv.load_pack()
    model, clip, vae = toy_eval.load(args.palette_only or "sd3", args.weights)
    names, dist = palette_distances(model, vae)
    print("latent distances between flat colours (process_in):")
    for i, n in enumerate(names):
        print(f"  {n:10s} " + " ".join(f"{names[j]} {dist[i, j]:.2f}" for j in range(len(names)) if j != i))
    if args.palette_only:
        return 0
    figs = measure(model, clip, vae, args.scenes, args.sigma_index, [int(b) for b in args.blocks.split(",")],
                   args.words)
    print(f"{args.scenes} validation scenes, each object once; sigma entry {args.sigma_index}, blocks {args.blocks}, "
          f"{args.words}: M1 share, attention ratio (medians), runs with ratio < 1")
    for (kind, role), v in sorted(figs.items()):
        a = np.array(v)
        print(f"  {kind:6s} {role:13s} M1 {np.median(a[:, 0]):.2f}  ratio {np.median(a[:, 1]):6.2f}  "
              f"looks at the other object more: {(a[:, 1] < 1).sum()} of {len(a)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
