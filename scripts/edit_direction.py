"""Does a toy model's recolouring or removal phrase point where an edit should go? (issue 18, pairs)

For validation scenes (toy_world.test_scene(i, "val"), never a test scene), each object once: the scene A and the
same scene with that object in the colour no object has, B (what the alteration "+blue square" asks for). At a few
noise levels the model denoises a noisy A (the host's own noise scaling, a seed per scene) once with the phrase
("blue square") and once with the empty prompt; the difference of the two clean-image predictions is what an
edit's guidance adds. With ``--kind removal`` (--removal-pairs), B is the scene without that object, the phrase
names the object ("red circle") and the difference is taken with the sign a removal's guidance gives it (empty
minus phrase). Printed per noise level, medians over the runs:

- cos: its cosine with B - A in the latent the model sees (1: straight towards the recoloured scene, or the scene
  without the object);
- size: its norm over that of B - A;
- object / other: its energy per latent cell on the edited object (dilated 4 px) over that on the other object
  (above 1: the change is on the object meant; about 1: the phrase changes both objects alike).

    python scripts/edit_direction.py --model sd3                # the committed toy flow transformer
    python scripts/edit_direction.py --model sd15 --weights out/ep/unet25/toy_sd15.safetensors
    python scripts/edit_direction.py --model sd15 --kind removal
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

SIGMA_SHARES = (0.9, 0.6, 0.3)  # where in the model's sigma range (share of its table from the clean end)


def recoloured(scene, index: int):
    """The scene with object ``index`` in the colour no object has."""
    new = toy_eval.new_colour_for(scene)
    return toy_world.recolour(scene, index, new), new


@torch.no_grad()
def measure(model, clip, vae, scenes: int, kind: str = "alteration") -> dict[float, list[tuple[float, float, float]]]:
    if kind not in ("alteration", "removal"):
        raise ValueError(f"kind must be 'alteration' or 'removal', not {kind!r}")
    base = model.model
    ms, fmt = base.model_sampling, base.latent_format
    sigmas = ms.sigmas.float()
    flow = hasattr(base.diffusion_model, "joint_blocks")

    def cond(text):
        c, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return {"c_crossattn": c, **({"y": pooled} if flow else {})}

    empty = cond("")
    out: dict[float, list[tuple[float, float, float]]] = {s: [] for s in SIGMA_SHARES}
    for i in range(scenes):
        scene = toy_world.test_scene(i, "val")
        for t in range(2):
            obj, other = scene.objects[t], scene.objects[1 - t]
            if kind == "removal":
                variant, words, sign = toy_world.without(scene, t), obj.words, -1.0
            else:
                variant, new = recoloured(scene, t)
                words, sign = f"{new} {obj.shape}", 1.0
            a = toy_eval.encode(vae, scene)
            b = toy_eval.encode(vae, variant)
            want = (fmt.process_in(b) - fmt.process_in(a))[0]
            cells = a.shape[-1]
            here = torch.from_numpy(toy_world.downsample_mask(toy_world.dilate(obj.mask, 4), cells) > 0)
            there = torch.from_numpy(toy_world.downsample_mask(toy_world.dilate(other.mask, 4), cells) > 0)
            phrase = cond(words)
            for share in SIGMA_SHARES:
                sigma = sigmas[int(share * (len(sigmas) - 1))].view(1)
                noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(i))
                x = ms.noise_scaling(sigma, noise, fmt.process_in(a))
                got = sign * (base.apply_model(x, sigma, **phrase) - base.apply_model(x, sigma, **empty))[0]
                energy = got.pow(2).sum(0)
                out[share].append((float((got * want).sum() / (got.norm() * want.norm()).clamp_min(1e-12)),
                                   float(got.norm() / want.norm()),
                                   float(energy[here].mean() / energy[there].mean().clamp_min(1e-12))))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sd3", choices=toy_eval.MODELS)
    p.add_argument("--weights", type=Path, default=None, help="a training run's export (default: the committed)")
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--kind", default="alteration", choices=("alteration", "removal"),
                   help="the recolouring phrase against the recolouring, or the object's words (negated) against "
                        "the object's removal")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    hostenv.import_host_models()
    model, clip, vae = toy_eval.load(args.model, args.weights)
    for share, rows in measure(model, clip, vae, args.scenes, args.kind).items():
        v = np.array(rows)
        print(f"sigma at {share:.1f} of the table: cos {np.median(v[:, 0]):.2f}  size {np.median(v[:, 1]):.2f}  "
              f"object / other {np.median(v[:, 2]):.2f}  ({len(v)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
