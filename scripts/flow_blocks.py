"""Which joint blocks M1 should read on a flow transformer (issue 17), measured on the toy flow transformer.

For each validation scene (toy_world.test_scene(i, "val"), never a test scene) and each of its objects, the
pack's removal edit ("-red circle", toy_eval.SETTINGS["sd3"]) is run with M1 read from each set of joint
blocks; printed per set: the median M1 share on the object (toy_eval.localisation: the step-mean M1 mask's share
on the object's cells dilated by one), the attention ratio (on the object / on the other object) and the
removals that landed (toy_eval.SUCCESS).

    python scripts/flow_blocks.py --scenes 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostenv  # noqa: E402
import toy_eval  # noqa: E402
import toy_world  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=10)
    p.add_argument("--sets", default="0;1;2;3;1,2;2,3;0,1,2,3", help="block sets, ';'-separated")
    args = p.parse_args(argv)
    hostenv.import_host()
    pack = toy_eval.Pack.load()
    guider = hostenv.import_pack_module("nodes.guider")
    model, clip, vae = toy_eval.load("sd3")
    s = toy_eval.SETTINGS["sd3"]
    sets = [[int(b) for b in part.split(",")] for part in args.sets.split(";")]
    results = {tuple(b): [] for b in sets}
    chosen = guider.double_blocks
    try:
        for i in range(args.scenes):
            scene = toy_world.test_scene(i, "val")
            latent = toy_eval.encode(vae, scene)
            before = toy_eval.decode(vae, latent)
            inv = toy_eval.invert(pack, model, clip, latent, scene.caption, s)
            for t in (0, 1):
                target, other = scene.objects[t], scene.objects[1 - t]
                for blocks in sets:
                    guider.double_blocks = lambda _m, b=blocks: list(b)
                    out, masks, rec = toy_eval.edit(pack, model, clip, inv, target.words, True, **s.remove)
                    loc = toy_eval.localisation(pack, masks, rec, target, other)
                    rm = toy_eval.removal(vae, latent, out, before, target, other)
                    ok = toy_eval.removed(rm["colour_drop"], rm["cleared"], rm["other_kept"])
                    results[tuple(blocks)].append((loc["m1_share"], loc["ratio_both"], ok))
            print(f"scene {i} done", flush=True)
    finally:
        guider.double_blocks = chosen
    print(f"blocks: median M1 share, median attention ratio, removals landed (of {2 * args.scenes})")
    for blocks, rows in results.items():
        a = np.array(rows, dtype=np.float64)
        print(f"  {','.join(map(str, blocks)):8s} {np.median(a[:, 0]):.3f}  {np.median(a[:, 1]):8.2f}  {int(a[:, 2].sum())}")
    return 0


if __name__ == "__main__":
    with torch.no_grad():
        raise SystemExit(main())
