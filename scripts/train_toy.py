"""Train the toy SD1.x-family model (scripts/toy_model.py) on the toy world (scripts/toy_world.py).

Stages (each resumable from its checkpoint in --work; re-running a finished stage does nothing):

1. ``vae``: the AutoencoderKL on rendered scenes (L1 + L2 + 1e-6 KL), 64 px crops (scripts/tune_toy_decoder.py
   tunes its decoder on whole scenes afterwards, the encoder and so the latents unchanged).
2. ``encode``: encode --scenes training scenes once (posterior means), fold a scale into the VAE so that
   SD1.5's latent factor 0.18215 gives unit variance, cache latents and captions.
3. ``unet``: the UNet and the text encoder together on the cached latents (epsilon prediction, SD1.5's
   VP schedule, flips/rotations of the latents, 10 % empty captions, timesteps half uniform and half in
   [300, 900)); a localisation probe on held-out scenes every --probe-every steps.
4. ``export``: fp16 safetensors and a training record (assets/toy/).

    python scripts/train_toy.py --stage all --work out/toy_train      # seeded, deterministic on CPU

Runs on the CPU (or --device cuda). The host is imported through scripts/hostenv.py.
"""

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostenv  # noqa: E402
import toy_world  # noqa: E402

toy_model = None  # nodes/toy_model.py, imported with the host in main()
WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "toy" / "toy_sd15.safetensors"

SCALE = 0.18215
PROBE_T = 600
VAE_CROP = 64


def common_args(p: argparse.ArgumentParser, stages: list[str], work: str, out: Path) -> None:
    """The options both toy trainers take (this one and train_toy_flow.py): stages, folders, seed, machine, the VAE
    and encode stages, batch."""
    p.add_argument("--stage", default="all", choices=[*stages, "all"])
    p.add_argument("--work", type=Path, default=Path(work))
    p.add_argument("--out", type=Path, default=out)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--scenes", type=int, default=4000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vae-from", type=Path, default=None,
                   help="vae stage: take the VAE of these committed toy weights (assets/toy/*.safetensors) instead of "
                        "training one")
    p.add_argument("--phrase-loss", type=float, default=0.0,
                   help="weight of the auxiliary loss on the phrases a user types to recolour an object (0: off): "
                        "the attention of the shape word of '<a colour no object has> <shape>' on the object of "
                        "that shape")
    p.add_argument("--phrase-batch", type=int, default=4, help="samples of each batch the phrase loss runs on")
    p.add_argument("--phrase-words", default="shape", choices=("shape", "both"),
                   help="which words of the phrase the phrase loss teaches: the shape word (phrase_rows says why) or "
                        "both (as first tried)")
    p.add_argument("--shape-only", type=float, default=0.0,
                   help="probability that a caption names an object whose shape is its own in the scene by the shape "
                        "alone ('a square'), so that the shape word learns the shape whatever colour comes before it "
                        "(0: the committed recipe)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start the denoiser and text encoder from these toy weights of the trainer's kind (a "
                        "fine-tune); the encode stage then keeps their VAE's scale as it is, since the weights were "
                        "trained on it")
    p.add_argument("--palette", default="rgb", choices=sorted(toy_world.PALETTES),
                   help="the world's colours (toy_world.PALETTES; the committed models': rgb)")
    p.add_argument("--colour-spread", type=float, default=0.0,
                   help="vae stage: weight of a loss that puts the palette's colours at equal distances from each "
                        "other in the latent (colour_spread(); 0: off, the committed recipe), so that no colour lies "
                        "between the other two")
    p.add_argument("--edit-pairs", type=float, default=0.0,
                   help="share of the training rows (of scenes with an object of its own shape) that learn an "
                        "edit-shaped target: a scene noised, the phrase '<new colour> <shape>' as the prompt, and as the "
                        "target the same scene with that object in the new colour (edit_variant(), pair_target()); "
                        "0: the committed recipe")
    p.add_argument("--caption-edits", type=float, default=0.0,
                   help="share of the --edit-pairs rows whose prompt is the whole caption of the target scene ('a "
                        "green circle and a blue square' on the scene with the red circle, the words in a random "
                        "order) instead of the phrase: the edit a Prompt Edit's word swap asks for (edit_rows()); 0: "
                        "the phrase always")
    p.add_argument("--removal-pairs", type=float, default=0.0,
                   help="share of the training rows (of those --edit-pairs leaves) that learn a removal-shaped "
                        "target: a scene noised, the phrase '<colour> <shape>' naming one of its objects as the "
                        "prompt, and as the target the scene moved away from the same scene without that object "
                        "(removal_variant(), pair_batch()), so that the phrase points from the object's absence to "
                        "it and an edit's negative guidance back; 0: the committed recipe")
    p.add_argument("--budget-min", type=float, default=0,
                   help="fit the denoiser's steps to this many minutes of this process: the run measures its speed "
                        "over steps 50-150 and lowers the step count (and so the learning-rate schedule) to what fits "
                        "(a resumed run fits afresh); 0: the steps as given")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(p, ["vae", "encode", "unet", "export"], "out/toy_train", WEIGHTS)
    p.add_argument("--unet-steps", type=int, default=4000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-snr", type=float, default=0.0,
                   help="gamma of min-SNR loss weighting, with timesteps drawn more at high noise (0: off)")
    p.add_argument("--x0-weight", type=float, default=0.0,
                   help="weight each sample's loss by 1/SNR clamped to [1, this] (x0-space error), timesteps drawn "
                        "more at high noise (0: off)")
    p.add_argument("--attn-loss", type=float, default=0.0,
                   help="weight of an auxiliary loss putting each named word's cross-attention (1/4-resolution "
                        "blocks) on its object's cells (0: off)")
    p.add_argument("--probe-every", type=int, default=250)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--command", default="", help="export: a training command to list first (one run before start records were logged)")
    p.add_argument("--stop-after-min", type=float, default=0, help="checkpoint and exit after this many minutes")
    return p.parse_args(argv)


def log(work: Path, record: dict) -> None:
    record = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), **record}
    with open(work / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).float().permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def resume(path: Path, module, opt) -> tuple[int, float]:
    """(step, minutes) of a stage's checkpoint ``path`` (its "model" and "opt" loaded into ``module`` and ``opt``), or
    (0, 0.0) where there is none yet."""
    if not path.exists():
        return 0, 0.0
    ck = torch.load(path, weights_only=False)
    module.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    return ck["step"], ck["minutes"]


def save_ckpt(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- weights
@torch.no_grad()
def init_weights_(module: torch.nn.Module, seed: int) -> None:
    """Fresh weights for training (the host's ops leave them uninitialised): PyTorch's default scheme
    (uniform, bound 1/sqrt(fan_in)), embeddings N(0, 0.02), norms 1/0, from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            if isinstance(sub, (torch.nn.GroupNorm, torch.nn.LayerNorm)) or "norm" in type(sub).__name__.lower():
                p.fill_(1.0 if name == "weight" else 0.0)
            elif isinstance(sub, torch.nn.Embedding):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif p.ndim >= 2:
                bound = 1.0 / math.sqrt(p[0].numel())
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
            elif name == "bias":
                p.zero_()
            elif not torch.isfinite(p).all():
                raise RuntimeError(f"no init rule for {type(sub).__name__}.{name}")


def trainable(*modules) -> list:
    """Every parameter of ``modules``, switched to require gradients, as the optimiser's list. The host builds its
    diffusion models frozen (ComfyUI 0.33's BaseModel calls ``requires_grad_(False)``; 0.3.64 did not), so a
    trainer that switched on only the text encoder trained nothing else there, silently: the loss stayed where it
    started."""
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def new_unet(seed):
    unet = toy_model.build_unet()
    if seed is not None:
        init_weights_(unet.model.diffusion_model, seed)
    return unet


def new_clip(seed):
    clip = toy_model.build_clip()
    if seed is not None:
        init_weights_(clip.cond_stage_model, seed + 1)
    return clip


def new_vae_module(seed=None, config=None):
    """The bare host ``AutoencoderKL`` of the toy model (what ``comfy.sd.VAE`` wraps); ``config`` another
    layout of it (the flow model's 16 channels)."""
    import comfy.ldm.models.autoencoder

    ae = comfy.ldm.models.autoencoder.AutoencoderKL(**(config or toy_model.VAE_CONFIG)["params"])
    if seed is not None:
        init_weights_(ae, seed + 2)
    return ae


def file_state(unet, clip, vae_module, token_ids: list[int]) -> dict[str, torch.Tensor]:
    """One flat state dict for the file: ``unet.*``, ``te.*`` (token table reduced to the used rows), ``vae.*``."""
    out = {f"unet.{k}": v for k, v in unet.model.diffusion_model.state_dict().items()}
    te = clip.cond_stage_model.state_dict()
    table_key = next(k for k in te if k.endswith("token_embedding.weight"))
    ids = torch.tensor(sorted(set(token_ids)), dtype=torch.int32)
    for k, v in te.items():
        if k != table_key:
            out[f"te.{k}"] = v
    out[toy_model.TOKEN_ROWS_KEY] = te[table_key][ids.long()]
    out[toy_model.TOKEN_IDS_KEY] = ids
    out.update({f"vae.{k}": v for k, v in vae_module.state_dict().items()})
    return out


def save_fp16(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(half, str(path), metadata=metadata)


# ---------------------------------------------------------------------------------------------- VAE
def vae_posterior(ae, x):
    moments = ae.quant_conv(ae.encoder(x))
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


# px: the flat images colour_spread() encodes, the world's size (a 16 x 16 latent, its centre 8 x 8 measured), as
# phrase_probe.palette_distances() measures them: the VAE's mid-block attention sees the whole image, so a smaller
# patch has other latents (32 px patches made equal left the UNet VAE's 128 px colours at 1.77 / 2.20 / 1.31)
SPREAD_PATCH = toy_world.SIZE


def flat_colour_latents(ae, colours, size: int = SPREAD_PATCH) -> torch.Tensor:
    """(colours, channels): the posterior mean of a flat ``size`` px patch of each RGB colour, averaged over the
    centre half of its latent (away from the padding)."""
    images = [np.full((size, size, 3), rgb, np.uint8) for rgb in colours]
    mean, _ = vae_posterior(ae, to_tensor(images).to(next(ae.parameters()).device))
    c = mean.shape[-1] // 4
    return mean[:, :, c:-c, c:-c].mean((2, 3))


def colour_spread(ae) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, distances): the palette's pairwise latent distances (flat_colour_latents(), the object colours only)
    and how unequal they are: the mean squared deviation of each distance from their mean, relative to the mean
    (0 when the three colours form an equilateral triangle; scale-free, so it does not push the latent's size,
    which the KL term and the encode stage's fold set)."""
    v = flat_colour_latents(ae, list(toy_world.COLOURS.values()))
    i, j = torch.triu_indices(len(v), len(v), 1)
    d = (v[i] - v[j]).pow(2).sum(-1).add(1e-8).sqrt()
    return (d / d.mean() - 1.0).pow(2).mean(), d


def train_vae(args, work: Path) -> None:
    path = work / "vae.pt"
    if args.vae_from is not None:
        if not path.exists():
            vae_from_weights(args, path)
        return
    ae = new_vae_module(seed=args.seed, config=getattr(args, "vae_config", None)).to(args.device)
    opt = torch.optim.Adam(ae.parameters(), lr=5e-4)
    step, minutes = resume(path, ae, opt)
    if step >= args.vae_steps:
        return
    from tqdm import tqdm

    t0, bar = time.time(), tqdm(total=args.vae_steps, initial=step, desc="vae", mininterval=5)
    ae.train()
    while step < args.vae_steps:
        rng = np.random.default_rng([args.seed, 1, step])
        idx = rng.integers(0, 10**7, size=args.vae_batch)
        crops = []
        for i in idx:  # random 64 px crops: the autoencoder is convolutional, 4x cheaper than whole scenes
            y0, x0 = (int(v) for v in rng.integers(0, toy_world.SIZE - VAE_CROP + 1, size=2))
            crops.append(toy_world.scene(int(i), "train").image[y0:y0 + VAE_CROP, x0:x0 + VAE_CROP])
        x = to_tensor(crops).to(args.device)
        torch.manual_seed(args.seed * 100003 + step)
        mean, logvar = vae_posterior(ae, x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        rec = ae.decoder(ae.post_quant_conv(z))
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
        l1, l2 = (rec - x).abs().mean(), (rec - x).pow(2).mean()
        loss = l1 + l2 + 1e-6 * kl
        spread = getattr(args, "colour_spread", 0.0)
        if spread > 0:
            unequal, dists = colour_spread(ae)
            loss = loss + spread * unequal
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        elapsed = minutes + (time.time() - t0) / 60
        if step % 25 == 0 or step == args.vae_steps:
            log(work, {"stage": "vae", "step": step, "l1": l1.item(), "l2": l2.item(), "kl": kl.item(),
                       **({"unequal": unequal.item(), "distances": [round(v, 3) for v in dists.tolist()]}
                          if spread > 0 else {}),
                       "minutes": round(elapsed, 2)})
        if step % args.ckpt_every == 0 or step == args.vae_steps or stop_now(args, t0):
            save_ckpt(path, model=ae.state_dict(), opt=opt.state_dict(), step=step, minutes=elapsed)
            if stop_now(args, t0):
                sys.exit(3)
    bar.close()


def vae_from_weights(args, path: Path) -> None:
    """The vae stage's checkpoint from a committed toy model's VAE (``--vae-from``), its scale (and shift) already
    folded in: the encode stage then folds only what its own scenes call for (k 0.997 on the UNet's VAE; 1.14 on the
    flow transformer's, whose process_in gave a standard deviation of 0.88: see encode())."""
    from safetensors.torch import load_file

    sd = {k[4:]: v.float() for k, v in load_file(str(args.vae_from)).items() if k.startswith("vae.")}
    ae = new_vae_module(config=getattr(args, "vae_config", None))
    ae.load_state_dict(sd)
    save_ckpt(path, model=ae.state_dict(), step=0, minutes=0.0, source=str(args.vae_from.name))
    log(path.parent, {"stage": "vae", "from": str(args.vae_from.name)})


def fit_budget(args, steps_attr: str, step: int, t_start: float, step_start: int, work: Path) -> None:
    """``--budget-min``: lower the step count to what fits in the budget at the speed measured over steps 50-150 of
    the run (after the warm-up); logged."""
    done = step - step_start
    if args.budget_min <= 0 or getattr(args, "_fitted", False) or done < 50:
        return
    if done == 50 or not hasattr(args, "_t50"):
        args._t50 = time.time()
        return
    if done < 150:
        return
    per_step = (time.time() - args._t50) / (done - 50)
    fits = step + int((args.budget_min * 60 - (time.time() - t_start)) / per_step)
    args._fitted = True
    if fits < getattr(args, steps_attr):
        setattr(args, steps_attr, max(step, fits))
    log(work, {"stage": "budget", "seconds_per_step": round(per_step, 4), "steps": getattr(args, steps_attr)})


def stop_now(args, t0) -> bool:
    return args.stop_after_min > 0 and (time.time() - t0) / 60 >= args.stop_after_min


# ---------------------------------------------------------------------------------------------- encode
@torch.no_grad()
def encode(args, work: Path) -> None:
    path = work / "latents.pt"
    if path.exists():
        return
    ck = torch.load(work / "vae.pt", weights_only=False)
    config = getattr(args, "vae_config", None)
    ae = new_vae_module(config=config).to(args.device)
    ae.load_state_dict(ck["model"])
    ae.eval()
    from tqdm import tqdm

    scenes, latents = [], []
    for start in tqdm(range(0, args.scenes, 64), desc="encode", mininterval=5):
        batch = [toy_world.scene(i, "train") for i in range(start, min(start + 64, args.scenes))]
        mean, _ = vae_posterior(ae, to_tensor([s.image for s in batch]).to(args.device))
        latents.append(mean.cpu())
        scenes.extend(batch)
    latents = torch.cat(latents)
    variants, latents_b = encode_variants(args, ae, len(scenes))
    removals, latents_r = encode_variants(args, ae, len(scenes), removal=True)
    # Fold a scale k into the VAE: z' = k z (quant_conv mean rows x k, logvar rows + 2 log k),
    # post_quant_conv weights / k. Then SD1.5's 0.18215 x z' has unit standard deviation.
    # With a latent format that shifts (SD3's process_in: (z' - shift) x scale), a per-channel offset c is
    # folded in too (z' = k z + c, c = shift - k mean(z)), so that process_in gives zero-mean channels; then k is
    # measured on the channel-centred latents, so that the variance is one after the shift too (the committed flow
    # transformer's VAE was folded before this was so: its process_in gives a standard deviation of 0.88).
    # A fine-tune (train_toy_flow's --init-from) keeps the VAE as it is (k = 1, no offset): its denoiser was trained
    # on those latents.
    scale, shift = getattr(args, "latent_format", (SCALE, 0.0))
    keep = getattr(args, "init_from", None) is not None
    spread = latents - latents.mean(dim=(0, 2, 3), keepdim=True) if shift else latents
    k = 1.0 if keep else (1.0 / scale) / float(spread.std())
    sd = {name: v.cpu() for name, v in ae.state_dict().items()}
    zc = (config or toy_model.VAE_CONFIG)["params"]["embed_dim"]
    w, b = sd["quant_conv.weight"].clone(), sd["quant_conv.bias"].clone()
    w[:zc] *= k
    b[:zc] *= k
    b[zc:] += 2 * math.log(k)
    sd["post_quant_conv.weight"] = sd["post_quant_conv.weight"] / k
    latents = latents * k
    latents_b = latents_b * k if latents_b is not None else None
    latents_r = latents_r * k if latents_r is not None else None
    if shift and not keep:
        c = shift - latents.mean(dim=(0, 2, 3))
        b[:zc] += c
        sd["post_quant_conv.bias"] = sd["post_quant_conv.bias"] - sd["post_quant_conv.weight"][:, :, 0, 0] @ c
        latents = latents + c.view(1, -1, 1, 1)
        latents_b = latents_b + c.view(1, -1, 1, 1) if latents_b is not None else None
        latents_r = latents_r + c.view(1, -1, 1, 1) if latents_r is not None else None
    sd["quant_conv.weight"], sd["quant_conv.bias"] = w, b
    captions = [s.caption for s in scenes]
    extra = {} if latents_b is None else {"variants": variants, "latents_b": latents_b.half()}
    if latents_r is not None:
        extra.update(removals=removals, latents_r=latents_r.half())
    save_ckpt(path, latents=latents.half(), scenes=list(range(args.scenes)), vae=sd, k=k,  # written whole, then
              objects=[[(o.colour, o.shape) for o in s.objects] for s in scenes], captions=captions,  # renamed
              **extra)
    log(work, {"stage": "encode", "scenes": args.scenes, "k": k,
               "latent_std_scaled": float(((latents - shift) * scale).std())})


def edit_variant(index: int, seed: int):
    """``--edit-pairs``: training scene ``index`` with one object recoloured, the pair an edit-shaped target is made
    of. The object is one whose shape no other object of the scene has (so "<colour> <shape>" names it), drawn, and
    its new colour one that no object of the scene has (as toy_eval's alterations ask for), drawn; everything else
    (places, sizes, the other object) is the scene's. Returns (the variant ToyScene, object index, old colour, new
    colour), or None when no object has a shape of its own. Its own seed sequence: the scenes are drawn as ever."""
    sc = toy_world.scene(index, "train")
    shapes = [o.shape for o in sc.objects]
    unique = [j for j, s in enumerate(shapes) if shapes.count(s) == 1]
    if not unique:
        return None
    rng = np.random.default_rng([seed, 7, index])  # (edit_rows() draws from [seed, 7, step]: other draws, no harm)
    j = unique[int(rng.integers(len(unique)))]
    absent = [c for c in toy_world.COLOURS if c not in {o.colour for o in sc.objects}]
    new = str(absent[int(rng.integers(len(absent)))])
    return toy_world.recolour(sc, j, new), j, str(sc.objects[j].colour), new


def removal_variant(index: int, seed: int):
    """``--removal-pairs``: training scene ``index`` without one of its objects (drawn; a one-object scene becomes
    the bare background), the pair a removal-shaped target is made of. Colours differ within a scene, so
    "<colour> <shape>" names the object. Returns (the variant ToyScene, object index, colour, shape); the rest of the
    scene (the other object's place and size) is the scene's. Its own seed sequence."""
    sc = toy_world.scene(index, "train")
    rng = np.random.default_rng([seed, 8, index])  # (removal_rows() draws from [seed, 9, step])
    j = int(rng.integers(len(sc.objects)))
    return toy_world.without(sc, j), j, str(sc.objects[j].colour), str(sc.objects[j].shape)


@torch.no_grad()
def encode_variants(args, ae, n: int, removal: bool = False):
    """The encode stage's edit pairs (``--edit-pairs`` > 0): [(object, old colour, new colour, shape) or None] per
    training scene and the variants' latents (zeros where there is none), encoded as the scenes are (the caller
    folds the same scale and offset in). (None, None) without --edit-pairs. With ``removal``, the same for
    ``--removal-pairs``: [(object, colour, shape)] and the latents of the scenes without that object."""
    if getattr(args, "removal_pairs" if removal else "edit_pairs", 0.0) <= 0:
        return None, None
    from tqdm import tqdm

    variants, images, rows = [], [], []
    for i in range(n):
        if removal:
            v = removal_variant(i, args.seed)
            variants.append(v[1:])
        else:
            v = edit_variant(i, args.seed)
            variants.append(None if v is None else (v[1], v[2], v[3], str(v[0].objects[v[1]].shape)))
        if v is not None:
            images.append(v[0].image)
            rows.append(i)
    out = None
    for start in tqdm(range(0, len(images), 64), desc="encode pairs", mininterval=5):
        mean, _ = vae_posterior(ae, to_tensor(images[start:start + 64]).to(args.device))
        if out is None:
            out = torch.zeros(n, *mean.shape[1:])
        out[rows[start:start + 64]] = mean.cpu()
    return variants, out


def edit_rows(args, step: int, idx, variants, objects=None) -> dict[int, tuple[str, str, list[int], int]]:
    """``--edit-pairs P``: which rows of a step's batch train an edit-shaped target instead of their caption. Each row
    whose scene has a variant (edit_variant()) is picked with probability P, from its own seed sequence (the rest of
    the batch is drawn as without it), in one of the two directions at random: the scene to its variant ("to", its
    object's new colour named) or the variant back to the scene ("back", the old colour named). Returns {row: (kind,
    phrase, token positions of its two words, object)}; the phrase is what a user types, "blue square" or "a blue
    square". With ``--caption-edits F`` and the scenes' ``objects`` ([(colour, shape), ...] per training scene), a
    share F of those rows (its own seed sequence again) takes instead the whole caption of the scene the row goes to
    (edit_caption()), as a Prompt Edit's target caption names the edited scene."""
    if getattr(args, "edit_pairs", 0.0) <= 0 or variants is None:
        return {}
    rng = np.random.default_rng([args.seed, 7, step])
    whole = getattr(args, "caption_edits", 0.0)
    rng_caption = np.random.default_rng([args.seed, 10, step]) if whole > 0 and objects is not None else None
    out = {}
    for b, i in enumerate(idx):
        v = variants[int(i)]
        if v is None or rng.random() >= args.edit_pairs:
            continue
        j, old, new, shape = v
        forward = bool(rng.random() < 0.5)
        words = f"{new if forward else old} {shape}"
        kind = "to" if forward else "back"
        out[b] = (kind, words, [1, 2], j) if rng.random() < 0.5 else (kind, f"a {words}", [2, 3], j)
        if rng_caption is not None and rng_caption.random() < whole:
            scene = [tuple(o) for o in objects[int(i)]]
            if forward:
                scene[j] = (new, shape)
            out[b] = (kind, *edit_caption(rng_caption, scene, j), j)
    return out


def edit_caption(rng, objects, j: int) -> tuple[str, list[int]]:
    """The full caption of a scene ``objects`` [(colour, shape), ...] in a random order ("a green circle and a blue
    square"), and the token positions of object ``j``'s two words in it (position 0: the start token)."""
    caption, named = ordered_caption(rng.permutation(len(objects)), [list(o) for o in objects])
    return caption, dict(named)[j]


def ordered_caption(order, mentions) -> tuple[str, list[tuple[int, list[int]]]]:
    """"a <words> and a <words>" over the objects in ``order``, ``mentions[i]`` the words naming object i: (caption,
    [(object, its words' token positions)]), position 0 being the start token."""
    tokens, named = [], []
    for k, i in enumerate(order):
        tokens += (["and"] if k else []) + ["a"]
        named.append((int(i), list(range(1 + len(tokens), 1 + len(tokens) + len(mentions[int(i)])))))
        tokens += mentions[int(i)]
    return " ".join(tokens), named


def removal_rows(args, step: int, idx, removals, taken: dict) -> dict[int, tuple[str, str, list[int], int]]:
    """``--removal-pairs R``: which of a step's rows that edit_rows() left (not in ``taken``) train a removal-shaped
    target: each with probability R, from its own seed sequence. {row: ("remove", phrase naming the removal
    variant's object, its words' token positions, object)}, as edit_rows()."""
    if getattr(args, "removal_pairs", 0.0) <= 0 or removals is None:
        return {}
    rng = np.random.default_rng([args.seed, 9, step])
    out = {}
    for b, i in enumerate(idx):
        if rng.random() >= args.removal_pairs or b in taken:
            continue
        j, colour, shape = removals[int(i)]
        words = f"{colour} {shape}"
        out[b] = ("remove", words, [1, 2], j) if rng.random() < 0.5 else ("remove", f"a {words}", [2, 3], j)
    return out


def pair_latents(args, data: dict, to_model, removal: bool = False):
    """The encode stage's variants and their latents as the model sees them (``to_model``), for --edit-pairs (with
    ``removal``, --removal-pairs); (None, None) without it. A work folder encoded without them has none: a clear stop,
    not a silent control run."""
    flag, key, name = ("removal_pairs", "latents_r", "removal") if removal else ("edit_pairs", "latents_b", "edit")
    if getattr(args, flag, 0.0) <= 0:
        return None, None
    if key not in data:
        raise SystemExit(f"--{flag.replace('_', '-')}: {args.work / 'latents.pt'} was encoded without {name} pairs; "
                         "use a new --work folder (the encode stage makes them)")
    return data["removals" if removal else "variants"], to_model(data[key].float().to(args.device))


def pair_target(noise, x0, x_tgt, signal):
    """The denoiser's target where the input is ``x0`` noised and the target scene ``x_tgt`` (--edit-pairs; x_tgt is
    x0 on every other row, where this is the usual target): the noise plus ``signal`` (the input's signal coefficient:
    sqrt(alpha-bar) for the UNet, 1 - sigma for the flow model) times x0 - x_tgt. Its prediction of the clean image is
    then the input scene moved towards the target by the noise coefficient (sqrt(1 - alpha-bar), sigma): the whole way
    at pure noise, not at all on a clean image, a bounded target at every noise level (the exact target scene would
    need the difference divided by the noise coefficient). So the phrase's prediction differs from the empty prompt's
    by the signal coefficient times x0 - x_tgt, on the edited object only: the direction an edit's guidance takes.
    The flow model's velocity target is noise - x_tgt: its ε and clean-image predictions are then exactly these, with
    signal 1 - sigma."""
    return noise + signal * (x0 - x_tgt)


def batch_latents(latents, variants: tuple, idx, edits: dict, rng, cells):
    """A step's (input latents, target latents, object cells or None), augmented alike (the same flips and turns,
    drawn from ``rng`` as augment() always draws them); the target is the input except on edit rows (pair_batch()).
    ``variants``: (the edit pairs' latents, the removal pairs' latents), each None without its flag."""
    src, tgt = pair_batch(latents, *variants, idx, edits) if edits else (latents[idx], None)
    others = ([tgt] if edits else []) + ([cells[idx]] if cells is not None else [])
    outs = augment(src, rng, *others)
    outs = list(outs) if others else [outs]
    x0 = outs[0].to(latents.device)
    x_tgt = outs[1].to(latents.device) if edits else x0
    return x0, x_tgt, (outs[-1] if cells is not None else None)


def with_edit_captions(pairs, edits: dict):
    """The batch's (caption, named) with the edit rows' phrases (edit_rows(), removal_rows()) in place: the phrase
    names the edited object, whose attention-loss positions are the phrase's two words."""
    if not edits:
        return pairs
    pairs = list(pairs)
    for b, (_, phrase, positions, obj) in edits.items():
        pairs[b] = (phrase, [(obj, positions)])
    return pairs


def pair_batch(latents, latents_b, latents_r, idx, rows: dict):
    """(input latents, target latents) of a batch with edit rows (edit_rows(), removal_rows()): a "to" row goes from
    the scene to its variant, a "back" row from the variant to the scene; a "remove" row's input is the scene and its
    target the scene moved away from its removal variant by as much as that variant lies from it (2 x0 - x_removed:
    with pair_target(), the phrase's clean prediction is the scene plus the noise coefficient times the object
    against its absence; so what the phrase adds points towards the object, and an edit's negative guidance on the
    phrase towards the background). Every other row is its scene, in and out."""
    src = latents[idx].clone()
    tgt = src.clone()
    for b, (kind, _, _, _) in rows.items():
        i = int(idx[b])
        if kind == "to":
            tgt[b] = latents_b[i].to(src.device, src.dtype)
        elif kind == "back":
            src[b] = latents_b[i].to(src.device, src.dtype)
        else:
            tgt[b] = 2 * src[b] - latents_r[i].to(src.device, src.dtype)
    return src, tgt


# ---------------------------------------------------------------------------------------------- UNet
_TOKENS: dict[str, list[int]] = {}


def token_lists(clip, texts: list[str]) -> list[list[int]]:
    """The host tokenizer's ids (77, padded) of each text (cached: the toy captions are few)."""
    out = []
    for t in texts:
        if t not in _TOKENS:
            toks = clip.tokenize(t)["l"]
            if len(toks) != 1:
                raise ValueError(f"caption too long: {t!r}")
            _TOKENS[t] = [int(tok) for tok, _w in toks[0]]
        out.append(_TOKENS[t])
    return out


def text_forward(te, tokens: list[list[int]]) -> torch.Tensor:
    """The host CLIP text encoder's forward (layer "last", final layer norm), written out of place so that
    it can be trained (the host's CLIPLayer adds its residuals in place, fine for inference only)."""
    from comfy.ldm.modules.attention import optimized_attention_for_device

    tm = te.transformer.text_model
    ids = torch.tensor(tokens, dtype=torch.long, device=next(te.parameters()).device)
    x = tm.embeddings(ids, dtype=torch.float32)
    n = x.shape[1]
    mask = torch.full((n, n), -torch.finfo(x.dtype).max, dtype=x.dtype, device=x.device).triu_(1)
    attention = optimized_attention_for_device(x.device, mask=True, small_input=True)
    for layer in tm.encoder.layers:
        x = x + layer.self_attn(layer.layer_norm1(x), mask, attention)
        x = x + layer.mlp(layer.layer_norm2(x))
    return tm.final_layer_norm(x)


def caption_with_positions(rng, objects, shape_only: float = 0.0, rng_words=None):
    """A training caption for a scene given its objects [(colour, shape), ...]: 10 % empty (for classifier-free
    guidance), 20 % one object's words as a user types a concept ("red circle" or "a red circle"), else the
    full caption in a random order. Returns (caption, [(object index, [token positions of its colour and
    shape words])]); every toy word is one CLIP token, position 0 is the start token.

    ``shape_only`` (``--shape-only``): each mention of an object whose shape no other object of the scene has is
    named by its shape alone ("a square") with this probability, drawn from ``rng_words`` (its own stream, so the
    rest of the batch is drawn as without it); its position list is then the shape word's alone."""
    u = rng.random()
    if u < 0.10:
        return "", []
    shapes = [s for _, s in objects]

    def mention(i):  # the words naming object i
        if shape_only > 0 and shapes.count(shapes[i]) == 1 and rng_words.random() < shape_only:
            return [objects[i][1]]
        return [objects[i][0], objects[i][1]]

    if u < 0.30:
        i = int(rng.integers(len(objects)))
        lead = [] if rng.random() < 0.5 else ["a"]
        words = mention(i)
        return " ".join(lead + words), [(i, list(range(1 + len(lead), 1 + len(lead) + len(words))))]
    order = rng.permutation(len(objects))
    mentions = {int(i): mention(int(i)) for i in order}  # drawn in the caption's order, as they always were
    return ordered_caption(order, mentions)


def recolour_phrase(rng, objects):
    """A phrase a user types to recolour an object of a scene ``objects`` [(colour, shape), ...]: a colour no object
    has and the object's shape ("blue square" or "a blue square"), for an object whose shape no other object has.
    Returns (phrase, object index, token positions of its two words), or None when no object has its own shape
    (or every colour is in the scene)."""
    shapes = [s for _, s in objects]
    unique = [i for i, s in enumerate(shapes) if shapes.count(s) == 1]
    absent = [c for c in toy_world.COLOURS if c not in {c for c, _ in objects}]
    if not unique or not absent:
        return None
    i = unique[int(rng.integers(len(unique)))]
    words = f"{absent[int(rng.integers(len(absent)))]} {objects[i][1]}"
    if rng.random() < 0.5:
        return words, i, [1, 2]
    return f"a {words}", i, [2, 3]


def check_fine_tune(args) -> None:
    """--init-from fine-tunes a model on its own latents: its VAE must come with it (--vae-from the same file); and
    --caption-edits is a share of the --edit-pairs rows, so it needs them."""
    if not 0 <= getattr(args, "caption_edits", 0.0) <= 1:
        raise SystemExit(f"--caption-edits {args.caption_edits}: a share of the --edit-pairs rows, from 0 to 1")
    if getattr(args, "caption_edits", 0.0) > 0 and getattr(args, "edit_pairs", 0.0) <= 0:
        raise SystemExit("--caption-edits is a share of the --edit-pairs rows: give --edit-pairs too (e.g. "
                         "--edit-pairs 0.5 --caption-edits 0.5)")
    if getattr(args, "init_from", None) is not None and args.vae_from is None:
        raise SystemExit(f"--init-from {args.init_from} needs --vae-from {args.init_from}: the fine-tune keeps the "
                         "VAE's scale, so it must be the VAE the model was trained with")


def phrase_rows(rng, objects, n: int, words: str = "shape"):
    """For the phrase loss (``--phrase-loss``): the first ``n`` samples of a batch (their scenes' ``objects``) that
    have a recolouring phrase (recolour_phrase()): (sample rows, phrases, [[(object, [the shape word's position])]]).
    Only the shape word is taught to look at its object: a shape word names the object of that shape whatever the
    colour before it, which agrees with the caption's attention loss; teaching the absent colour word to look there
    too contradicts it (the colour word looks at its colour's object in every other scene). Measured on the toy
    flow transformer, both words at weight 0.05: after 200 steps its own words' probe ratio was 4.0 against the
    control's 12.7 (the same fine-tune without the phrase loss), and the phrase's stayed at 1.0."""
    rows, texts, named = [], [], []
    for b, objs in enumerate(objects):
        picked = recolour_phrase(rng, objs)
        if picked is not None:
            rows.append(b)
            texts.append(picked[0])
            named.append([(picked[1], picked[2][1:] if words == "shape" else picked[2])])
        if len(rows) == n:
            break
    return rows, texts, named


def augment(x: torch.Tensor, rng, *others: torch.Tensor):
    """Random flips and 90-degree rotations of a latent batch (the shapes are symmetric); the same ones for
    other batches of maps (e.g. object masks), returned after it when given. One transform per sample (flip
    with p = 1/2, then k quarter turns), applied a group of samples at a time (8 groups at most)."""
    params = []
    for _ in range(x.shape[0]):
        flip, k = rng.random() < 0.5, int(rng.integers(4))
        params.append((flip, k))
    outs = [torch.empty_like(t) for t in (x, *others)]
    for flip in (False, True):
        for k in range(4):
            idx = [i for i, p in enumerate(params) if p == (flip, k)]
            if not idx:
                continue
            sel = torch.tensor(idx, device=x.device)
            for src, dst in zip((x, *others), outs, strict=True):
                y = src[sel.to(src.device)]
                y = y.flip(-1) if flip else y
                dst[sel.to(src.device)] = torch.rot90(y, k, dims=(-2, -1))
    return outs[0] if not others else tuple(outs)


def sample_timesteps(rng, n: int, high: bool = False) -> torch.Tensor:
    """Half uniform over [0, 1000), half in [300, 900) (``high``: in [400, 1000), where the words decide what
    is drawn)."""
    uni = rng.integers(0, 1000, size=n)
    mid = rng.integers(400, 1000, size=n) if high else rng.integers(300, 900, size=n)
    pick = rng.random(n) < 0.5
    return torch.from_numpy(np.where(pick, mid, uni)).long()


def alphas_cumprod(unet) -> torch.Tensor:
    sigmas = unet.model.model_sampling.sigmas.float()  # VP: sigma^2 = (1 - a) / a
    return 1.0 / (1.0 + sigmas**2)


ATTN_BLOCKS = [("input_blocks", 7), ("input_blocks", 8), ("output_blocks", 3), ("output_blocks", 4),
               ("output_blocks", 5)]  # the 1/4-resolution transformers (8x8 cells at 128 px)


class AttentionTap:
    """Head-averaged cross-attention probabilities of the 1/4-resolution blocks, kept with their graph
    (for the optional --attn-loss)."""

    def __init__(self, dm):
        self.maps, self.hooks = [], []
        for name, i in ATTN_BLOCKS:
            attn = getattr(dm, name)[i][1].transformer_blocks[0].attn2
            self.hooks.append(attn.register_forward_hook(self._hook, with_kwargs=True))

    def _hook(self, module, args, kwargs, output):
        x, ctx, h = args[0], kwargs["context"], module.heads
        q, k = module.to_q(x), module.to_k(ctx)
        b, n, d = q.shape
        q = q.view(b, n, h, d // h).transpose(1, 2)
        k = k.view(b, -1, h, d // h).transpose(1, 2)
        self.maps.append((q @ k.transpose(-1, -2) / math.sqrt(d // h)).softmax(-1).mean(1))  # (b, cells, tokens)

    def take(self) -> torch.Tensor:
        maps, self.maps = self.maps, []
        return torch.stack(maps).mean(0)


def seeded_noise(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, from a generator seeded with ``seed`` on ``x``'s device (on the CPU
    the same numbers as ever; on CUDA drawn there, not copied over)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def object_cells(n_scenes: int, cells: int = 8) -> torch.Tensor:
    """(scenes, 2, cells, cells): each training scene's object coverage of the attention cells."""
    out = torch.zeros(n_scenes, 2, cells, cells)
    for i in range(n_scenes):
        for j, obj in enumerate(toy_world.scene(i, "train").objects):
            out[i, j] = torch.from_numpy(toy_world.downsample_mask(obj.mask, cells))
    return out


def attention_loss(maps: torch.Tensor, named, cover: torch.Tensor) -> torch.Tensor:
    """Mean over the named words of -log(share of the word's spatial attention on its object's cells).
    maps (b, cells, tokens); named[b] = [(object, positions)]; cover (b, 2, c, c)."""
    rows, objs, toks = [], [], []
    for b, entries in enumerate(named):
        for obj, positions in entries:
            for t in positions:
                rows.append(b)
                objs.append(obj)
                toks.append(t)
    if not rows:
        return maps.sum() * 0.0
    dev = maps.device
    rows_t, objs_t, toks_t = (torch.tensor(v, device=dev) for v in (rows, objs, toks))
    p = maps[rows_t, :, toks_t]  # (words, cells)
    inside = (cover.to(dev)[rows_t, objs_t].flatten(1) > 0.25).to(p.dtype)
    share = (p * inside).sum(-1) / p.sum(-1).clamp_min(1e-8)
    return -torch.log(share + 1e-4).mean()


def train_unet(args, work: Path) -> None:
    path = work / "unet.pt"
    data = torch.load(work / "latents.pt", weights_only=False)
    latents = data["latents"].float().to(args.device) * SCALE
    variants, latents_b = pair_latents(args, data, lambda z: z * SCALE)
    removals, latents_r = pair_latents(args, data, lambda z: z * SCALE, removal=True)
    unet = new_unet(args.seed)
    clip = new_clip(args.seed)
    if args.init_from is not None:  # a fine-tune: the UNet and the text encoder of those weights
        start, start_clip, _ = toy_model.load_toy_model(args.init_from)
        unet.model.diffusion_model.load_state_dict(start.model.diffusion_model.state_dict())
        clip.cond_stage_model.load_state_dict(start_clip.cond_stage_model.state_dict())
        del start, start_clip
    dm = unet.model.diffusion_model.to(args.device)
    te = clip.cond_stage_model.clip_l
    te.to(args.device)
    params = trainable(dm, te)
    opt = torch.optim.Adam(params, lr=args.lr)
    step, minutes = 0, 0.0
    if path.exists():
        ck = torch.load(path, weights_only=False)
        dm.load_state_dict(ck["unet"])
        te.load_state_dict(ck["te"])
        opt.load_state_dict(ck["opt"])
        step, minutes = ck["step"], ck["minutes"]
    if step >= args.unet_steps:
        return
    with torch.no_grad():  # the training forward is the host's forward
        toks = token_lists(clip, ["a red circle and a blue square", ""])
        diff = (text_forward(te, toks) - te(toks)[0]).abs().max().item()
        if diff > 1e-4:
            raise RuntimeError(f"text_forward differs from the host's CLIP forward by {diff}")
    acp = alphas_cumprod(unet).to(args.device)
    probe = Probe(clip, unet, args.device)
    tap = AttentionTap(dm) if args.attn_loss > 0 or args.phrase_loss > 0 else None
    cells = object_cells(latents.shape[0]).to(args.device) if tap else None
    from tqdm import tqdm

    t0, bar = time.time(), tqdm(total=args.unet_steps, initial=step, desc="unet", mininterval=5)
    step0 = step
    while step < args.unet_steps:
        fit_budget(args, "unet_steps", step, t0, step0, work)
        dm.train()
        te.train()
        rng = np.random.default_rng([args.seed, 2, step])
        idx = rng.integers(0, latents.shape[0], size=args.batch)
        edits = edit_rows(args, step, idx, variants, data["objects"])
        edits.update(removal_rows(args, step, idx, removals, edits))
        x0, x_tgt, cover = batch_latents(latents, (latents_b, latents_r), idx, edits, rng, cells)
        words_rng = np.random.default_rng([args.seed, 5, step])  # --shape-only's own stream
        pairs = [caption_with_positions(rng, data["objects"][i], args.shape_only, words_rng) for i in idx]
        pairs = with_edit_captions(pairs, edits)
        captions = [c for c, _ in pairs]
        t = sample_timesteps(rng, args.batch, high=args.min_snr > 0 or args.x0_weight > 0).to(args.device)
        noise = seeded_noise(x0, args.seed * 1000003 + step)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # warm up the learning rate over 200 steps, then cosine to 10 %
        frac = step / max(1, args.unet_steps)
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        ctx = text_forward(te, token_lists(clip, captions))
        eps = dm(xt, timesteps=t.float(), context=ctx)
        per_sample = (eps - pair_target(noise, x0, x_tgt, a.sqrt())).pow(2).mean(dim=(1, 2, 3))
        loss = per_sample.mean()
        total = loss
        if args.min_snr > 0:  # min-SNR-gamma weighting (Hang et al. 2023): less weight on the low-noise steps
            snr = a.flatten() / (1 - a.flatten())
            total = (per_sample * (snr.clamp(max=args.min_snr) / snr)).mean()
        if args.x0_weight > 0:  # x0-space error (epsilon error / SNR), clamped to [1, x0_weight]: the noisy steps,
            snr = a.flatten() / (1 - a.flatten())  # where the words decide the colours, count more
            total = (per_sample * (1.0 / snr).clamp(1.0, args.x0_weight)).mean()
        if tap:
            attn = attention_loss(tap.take(), [n for _, n in pairs], cover)
            if args.attn_loss > 0:
                total = total + args.attn_loss * attn
        if args.phrase_loss > 0:  # train_toy_flow.phrase_loss's, on the UNet's 1/4-resolution cross-attention
            rows, texts, named = phrase_rows(rng, [data["objects"][i] for i in idx], args.phrase_batch,
                                             args.phrase_words)
            if rows:
                sel = torch.tensor(rows, device=xt.device)
                dm(xt[sel], timesteps=t[sel].float(), context=text_forward(te, token_lists(clip, texts)))
                phrase = attention_loss(tap.take(), named, cover[sel.to(cover.device)])
                total = total + args.phrase_loss * phrase
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        bar.update(1)
        elapsed = minutes + (time.time() - t0) / 60
        if step % 25 == 0:
            extra = {"attn_loss": round(attn.item(), 4)} if tap else {}
            if args.phrase_loss > 0 and rows:
                extra["phrase_loss"] = round(phrase.item(), 4)
            log(work, {"stage": "unet", "step": step, "loss": loss.item(), **extra, "lr": lr,
                       "minutes": round(elapsed, 2)})
        if step % args.probe_every == 0 or step == args.unet_steps:
            if tap:
                tap.maps = []
                for hk in tap.hooks:
                    hk.remove()
            log(work, {"stage": "probe", "step": step, **probe.run()})
            if tap:
                tap = AttentionTap(dm)
        if step % args.ckpt_every == 0 or step == args.unet_steps or stop_now(args, t0):
            save_ckpt(path, unet=dm.state_dict(), te=te.state_dict(), opt=opt.state_dict(), step=step,
                      minutes=elapsed)
            if stop_now(args, t0):
                sys.exit(3)
    bar.close()


def map_figures(amap: torch.Tensor, region: np.ndarray, inside: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """A probe's two figures of one flat attention map: the share of its top 10 % cells on ``region`` (bool), and
    its mean over the object's coverage ``inside`` / over the other object's ``other``."""
    top = (amap >= torch.quantile(amap, 0.9)).numpy()
    share = float((top & region).sum() / max(1, top.sum()))
    mean_in = float((amap * inside).sum() / inside.sum())
    mean_other = float((amap * other).sum() / other.sum())
    return share, mean_in / max(mean_other, 1e-12)


class Probe:
    """Localisation on held-out scenes at t = 600: each object's words ("red circle") as their own prompt,
    cross-attention at the 1/4-resolution blocks (input 7, 8 / output 3, 4, 5), heads and layers averaged.
    M1 share: of the top 10 % cells of the token-summed map, the share on the object (dilated one cell);
    ratio: the map's mean over the object / over the other object. Medians over scenes and objects. Key "phrase":
    the same for the phrase that recolours the object, a colour no object has and its shape ("blue square")."""

    BLOCKS = [("input_blocks", 7), ("input_blocks", 8), ("output_blocks", 3), ("output_blocks", 4),
              ("output_blocks", 5)]

    def __init__(self, clip, unet, device, n_scenes=12):
        self.clip, self.unet, self.device = clip, unet, device
        self.scenes = [toy_world.test_scene(i) for i in range(1000, 1000 + n_scenes)]
        self.maps = []

    @torch.no_grad()
    def run(self) -> dict:
        dm = self.unet.model.diffusion_model
        dm.eval()
        te = self.clip.cond_stage_model.clip_l
        te.eval()
        hooks = []
        for name, i in self.BLOCKS:
            attn = getattr(dm, name)[i][1].transformer_blocks[0].attn2
            hooks.append(attn.register_forward_hook(self._hook, with_kwargs=True))
        try:
            figures = self._measure(dm, te)
        finally:
            for h in hooks:
                h.remove()
        return figures

    def _hook(self, module, args, kwargs, output):
        x = args[0]
        ctx = kwargs["context"]
        h = module.heads
        q, k = module.to_q(x), module.to_k(ctx)
        b, n, d = q.shape
        q = q.view(b, n, h, d // h).transpose(1, 2)
        k = k.view(b, -1, h, d // h).transpose(1, 2)
        probs = (q @ k.transpose(-1, -2) / math.sqrt(d // h)).softmax(-1).mean(1)  # (b, n, tokens)
        self.maps.append(probs)

    def _measure(self, dm, te):
        from toy_world import dilate, downsample_mask

        acp = alphas_cumprod(self.unet)
        a = acp[PROBE_T]
        results = {"both": [], "colour": [], "shape": [], "phrase": []}
        ratios = {"both": [], "colour": [], "shape": [], "phrase": []}
        for si, sc in enumerate(self.scenes):
            x0 = self.latent_of(sc)
            g = torch.Generator().manual_seed(si)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)
            absent = next(c for c in toy_world.COLOURS if c not in {o.colour for o in sc.objects})
            for oi, obj in enumerate(sc.objects):
                other = sc.objects[1 - oi]
                # the object's words, and ("phrase") the phrase that recolours it: "<absent colour> <its shape>"
                for words, keys in ((obj.words, (("both", [1, 2]), ("colour", [1]), ("shape", [2]))),
                                    (f"{absent} {obj.shape}", (("phrase", [1, 2]),))):
                    ctx = te(token_lists(self.clip, [words]))[0]
                    self.maps = []
                    dm(xt.to(self.device), timesteps=torch.tensor([float(PROBE_T)], device=self.device), context=ctx)
                    m = torch.stack(self.maps).mean(0)[0].cpu()  # (64, tokens)
                    cells = int(math.isqrt(m.shape[0]))
                    region = dilate(downsample_mask(obj.mask, cells) > 0, 1)
                    inside = torch.from_numpy(downsample_mask(obj.mask, cells)).float().flatten()
                    other_cov = torch.from_numpy(downsample_mask(other.mask, cells)).float().flatten()
                    for key, toks in keys:
                        share, ratio = map_figures(m[:, toks].sum(-1), region.flatten(), inside, other_cov)
                        results[key].append(share)
                        ratios[key].append(ratio)
        out = {}
        for key in results:
            out[f"m1_{key}"] = round(float(np.median(results[key])), 3)
            out[f"ratio_{key}"] = round(float(np.median(ratios[key])), 3)
        return out

    def latent_of(self, sc):
        return self._encoder(to_tensor([sc.image]))

    _encoder = None


# ---------------------------------------------------------------------------------------------- export
def export(args, work: Path) -> None:
    data = torch.load(work / "latents.pt", weights_only=False)
    ck = torch.load(work / "unet.pt", weights_only=False)
    unet = toy_model.build_unet()
    clip = toy_model.build_clip()
    unet.model.diffusion_model.load_state_dict(ck["unet"])
    clip.cond_stage_model.clip_l.load_state_dict(ck["te"])
    ae = new_vae_module()
    ae.load_state_dict(data["vae"])
    words = sorted({w for c in data["captions"] for w in c.split()} | {"a", "and"})
    ids = [t for lst in token_lists(clip, [" ".join(words), ""]) for t in lst]
    state = file_state(unet, clip, ae, ids)
    vae_ck = torch.load(work / "vae.pt", weights_only=False)
    losses = [json.loads(line) for line in open(work / "log.jsonl")]
    last = {s: next((r for r in reversed(losses) if r["stage"] == s), None) for s in ("vae", "unet", "probe")}
    commands = [r["command"] for r in losses if r["stage"] == "start" and "--stage export" not in r["command"]]
    record = {
        "commands": ([args.command] if args.command else []) + commands,
        "seed": args.seed, "vae_steps": vae_ck["step"], "vae_minutes": round(vae_ck["minutes"], 1),
        **({"vae_from": vae_ck["source"]} if "source" in vae_ck else {}),
        "unet_steps": ck["step"], "unet_minutes": round(ck["minutes"], 1), "scenes": len(data["captions"]),
        "batch": args.batch, "machine": f"{platform.machine()} {platform.processor() or ''} "
                                        f"{os.cpu_count()} cores, torch {torch.__version__}, {args.device}",
        "final": last, "latent_scale_k": data["k"],
        "probes": [{k: v for k, v in r.items() if k not in ("stage", "time")} for r in losses if r["stage"] == "probe"],
    }
    meta = {"format": "ledits-toy-sd15", "record": json.dumps(record)}
    save_fp16(args.out, state, meta)
    (args.out.parent / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


def main(argv=None) -> int:
    args = parse_args(argv)
    check_fine_tune(args)
    toy_world.use_palette(args.palette)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    log(args.work, {"stage": "start", "command": " ".join(["python", "scripts/train_toy.py", *sys.argv[1:]]),
                    "threads": torch.get_num_threads()})
    hostenv.import_host_models()
    global toy_model
    toy_model = hostenv.import_pack_module("nodes.toy_model")
    torch.set_grad_enabled(True)
    if args.device.startswith("cuda"):  # TF32 matrix products: the toy models need no more precision in training
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    stages = ["vae", "encode", "unet", "export"] if args.stage == "all" else [args.stage]
    for stage in stages:
        if stage == "vae":
            train_vae(args, args.work)
        elif stage == "encode":
            encode(args, args.work)
        elif stage == "unet":
            setup_probe_encoder(args.work, args.device)
            train_unet(args, args.work)
        else:
            export(args, args.work)
    return 0


def setup_probe_encoder(work: Path, device) -> None:
    data = torch.load(work / "latents.pt", weights_only=False)
    ae = new_vae_module().to(device)
    ae.load_state_dict(data["vae"])
    ae.eval()

    @torch.no_grad()
    def encoder(x):
        return vae_posterior(ae, x.to(device))[0].cpu() * SCALE

    Probe._encoder = staticmethod(encoder)


if __name__ == "__main__":
    sys.exit(main())
