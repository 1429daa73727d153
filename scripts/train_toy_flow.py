"""Train the toy flow transformer (nodes/toy_model.py: the host's SD3 MMDiT classes) on the toy world.

Issue 18 item 4: the same world and the same text encoder layout as the toy UNet (scripts/train_toy.py), a
flow-matching model of the host's SD3 family, so that the flow path's masks and guidance can be shown to land.

Stages (each resumable from its checkpoint in --work; re-running a finished stage does nothing):

1. ``vae``: the toy AutoencoderKL with 16 latent channels (train_toy's VAE stage).
2. ``encode``: training scenes encoded once; a scale and per-channel offset folded into the VAE so that the
   SD3 latent format's process_in gives zero-mean, unit-variance latents (the committed model's: zero-mean,
   standard deviation 0.88, folded before train_toy.encode measured the spread after the shift); with
   ``--edit-pairs``, each scene's recoloured variant too (train_toy.edit_variant); with ``--removal-pairs``, each scene
   with one object drawn away (train_toy.removal_variant).
3. ``dit``: the MMDiT and the text encoder (started from the committed toy UNet's text encoder) together:
   rectified flow as the host samples it (x = (1 - sigma) x0 + sigma eps, the model predicts eps - x0,
   sigma drawn from the host's SD3 model sampling table, shift 3), flips/rotations, 10 % empty captions,
   20 % one object's words. Optional auxiliary joint-attention loss (``--attn-loss``: each named word's image
   attention on its object's cells, averaged over every joint block). A probe every --probe-every steps
   measures localisation per joint block on validation scenes: the figures M1's block choice rests on.
4. ``export``: fp16 safetensors (assets/toy/toy_sd3.safetensors) and its record (assets/toy/TRAINING_SD3.json).

    python scripts/train_toy_flow.py --stage all --work out/toy_flow      # seeded, deterministic on CPU
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
import train_toy  # noqa: E402

toy_model = None  # nodes/toy_model.py, imported with the host in main()
ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "assets" / "toy" / "toy_sd3.safetensors"
RECORD = "TRAINING_SD3.json"
SD3_SCALE, SD3_SHIFT = None, None  # the host's latent_formats.SD3 (process_in: (z - shift) * scale), read in main()
PROBE_INDEX = 600  # the probe's sigma: entry 600 of the model's 1000-step sigma table (0.82 at shift 3)
CELLS = 16  # image tokens per side at 128 px (32x32 latent, patch 2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train_toy.common_args(p, ["vae", "encode", "dit", "export"], "out/toy_flow", WEIGHTS)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--attn-loss", type=float, default=0.0,
                   help="weight of the auxiliary joint-attention loss (0: off)")
    p.add_argument("--probe-every", type=int, default=250)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--stop-after-min", type=float, default=0, help="checkpoint and exit after this many minutes")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- model
@torch.no_grad()
def init_dit_(dm, seed: int) -> None:
    """train_toy's default init, norms to 1/0 (the host's RMSNorm too), and DiT's zero init of every adaLN
    modulation and of the final projection (each block starts as the identity, the output as zero)."""
    train_toy.init_weights_(dm, seed)
    for name, sub in dm.named_modules():
        if "norm" in type(sub).__name__.lower():
            for pname, p in sub.named_parameters(recurse=False):
                p.fill_(1.0 if pname == "weight" else 0.0)
        if name.endswith("adaLN_modulation") or name == "final_layer.linear":
            for p in sub.parameters():
                p.zero_()


def text_forward(te, tokens):
    """Hidden states and pooled vector of the toy CLIP (what SD3's model takes as context and y). The host's
    SD1.x CLIP pools without the projection: the final hidden state at the first end token."""
    x = train_toy.text_forward(te, tokens)
    ids = torch.tensor(tokens, dtype=torch.long, device=x.device)
    eos = (ids == 49407).int().argmax(dim=-1)
    return x, x[torch.arange(x.shape[0], device=x.device), eos]


class JointTap:
    """An optimized_attention_override recording, with their graph, the image queries' head-averaged
    probabilities on the text tokens of every joint attention (b, image tokens, text tokens)."""

    def __init__(self, text_len: int, image_len: int):
        self.text_len, self.image_len = text_len, image_len
        self.maps: list[torch.Tensor] = []

    def __call__(self, func, *args, **kwargs):
        q, k, heads = args[0], args[1], int(kwargs.get("heads", args[3] if len(args) > 3 else 0))
        if q.shape[1] == self.text_len + self.image_len and not kwargs.get("skip_reshape", False):
            b, n, _ = q.shape
            qh = q.view(b, n, heads, -1).transpose(1, 2)[:, :, self.text_len:]
            kh = k.view(b, n, heads, -1).transpose(1, 2)
            probs = (qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5).softmax(-1)
            self.maps.append(probs[..., :self.text_len].mean(1))
        return func(*args, **kwargs)

    def take(self) -> list[torch.Tensor]:
        maps, self.maps = self.maps, []
        return maps


def forward(dm, xt, sigma, ms, ctx, pooled, tap=None):
    options = {"optimized_attention_override": tap} if tap is not None else {}
    return dm(xt, ms.timestep(sigma), context=ctx, y=pooled, transformer_options=options)


def train_dit(args, work: Path) -> None:
    path = work / "dit.pt"
    data = torch.load(work / "latents.pt", weights_only=False)
    latents = (data["latents"].float().to(args.device) - SD3_SHIFT) * SD3_SCALE  # what the sampler hands the model
    variants, latents_b = train_toy.pair_latents(args, data, lambda z: (z - SD3_SHIFT) * SD3_SCALE)
    removals, latents_r = train_toy.pair_latents(args, data, lambda z: (z - SD3_SHIFT) * SD3_SCALE, removal=True)
    model = toy_model.build_flow_model()
    dm = model.model.diffusion_model.to(args.device)
    init_dit_(dm, args.seed)
    ms = model.model.model_sampling
    if args.init_from is None:
        _, clip, _ = toy_model.load_toy_model()  # the toy UNet's text encoder as the start
    else:  # a fine-tune: the MMDiT and the text encoder of those weights
        start, clip, _ = toy_model.load_toy_model(args.init_from, kind="sd3")
        dm.load_state_dict(start.model.diffusion_model.state_dict())
        del start
    te = clip.cond_stage_model.clip_l.to(args.device)
    params = train_toy.trainable(dm, te)
    opt = torch.optim.Adam(params, lr=args.lr)
    step, minutes = 0, 0.0
    if path.exists():
        ck = torch.load(path, weights_only=False)
        dm.load_state_dict(ck["dit"])
        te.load_state_dict(ck["te"])
        opt.load_state_dict(ck["opt"])
        step, minutes = ck["step"], ck["minutes"]
    if step >= args.steps:
        return
    with torch.no_grad():  # the training forward is the host's forward
        toks = train_toy.token_lists(clip, ["a red circle and a blue square", ""])
        ctx, pooled = (v.cpu() for v in text_forward(te, toks))
        host = clip.encode_from_tokens(clip.tokenize("a red circle and a blue square"), return_pooled=True)
        diff = max((ctx[:1] - host[0]).abs().max().item(), (pooled[:1] - host[1]).abs().max().item())
        if diff > 1e-4:
            raise RuntimeError(f"text_forward differs from the host's CLIP forward by {diff}")
    te.to(args.device)  # the host's encode loads the encoder onto its own device (the CPU under --cpu)
    sigmas = ms.sigmas.float()
    probe = FlowProbe(clip, model, args.device, work)
    image_len = (latents.shape[-1] // 2) * (latents.shape[-2] // 2)
    tap = JointTap(77, image_len) if args.attn_loss > 0 or args.phrase_loss > 0 else None
    cells = train_toy.object_cells(latents.shape[0], CELLS).to(args.device) if tap else None
    from tqdm import tqdm

    t0, bar = time.time(), tqdm(total=args.steps, initial=step, desc="dit", mininterval=5)
    step0 = step
    while step < args.steps:
        train_toy.fit_budget(args, "steps", step, t0, step0, work)
        dm.train()
        te.train()
        rng = np.random.default_rng([args.seed, 3, step])
        idx = rng.integers(0, latents.shape[0], size=args.batch)
        edits = train_toy.edit_rows(args, step, idx, variants, data["objects"])
        edits.update(train_toy.removal_rows(args, step, idx, removals, edits))
        x0, x_tgt, cover = train_toy.batch_latents(latents, (latents_b, latents_r), idx, edits, rng, cells)
        words_rng = np.random.default_rng([args.seed, 5, step])  # --shape-only's own stream
        pairs = [train_toy.caption_with_positions(rng, data["objects"][i], args.shape_only, words_rng) for i in idx]
        pairs = train_toy.with_edit_captions(pairs, edits)
        sigma = sigmas[torch.from_numpy(rng.integers(0, len(sigmas), size=args.batch))].to(args.device)
        noise = train_toy.seeded_noise(x0, args.seed * 1000003 + step)
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        frac = step / max(1, args.steps)
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        ctx, pooled = text_forward(te, train_toy.token_lists(clip, [c for c, _ in pairs]))
        v = forward(dm, xt, sigma, ms, ctx, pooled, tap)
        loss = (v - (noise - x_tgt)).pow(2).mean()  # x_tgt: x0 but on --edit-pairs / --removal-pairs rows (pair_target)
        total = loss
        if tap:
            maps = tap.take()
            attn = train_toy.attention_loss(torch.stack(maps).mean(0), [n for _, n in pairs], cover)
            if args.attn_loss > 0:
                total = total + args.attn_loss * attn
        if args.phrase_loss > 0:
            phrase = phrase_loss(dm, te, clip, ms, rng, xt, sigma, cover, [data["objects"][i] for i in idx], tap,
                                 args.phrase_batch, args.phrase_words)
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
            if args.phrase_loss > 0:
                extra["phrase_loss"] = round(phrase.item(), 4)
            train_toy.log(work, {"stage": "dit", "step": step, "loss": loss.item(), **extra, "lr": lr,
                                 "minutes": round(elapsed, 2)})
        if step % args.probe_every == 0 or step == args.steps:
            train_toy.log(work, {"stage": "probe", "step": step, **probe.run(dm, te)})
        if step % args.ckpt_every == 0 or step == args.steps or train_toy.stop_now(args, t0):
            train_toy.save_ckpt(path, dit=dm.state_dict(), te=te.state_dict(), opt=opt.state_dict(), step=step,
                                minutes=elapsed)
            if train_toy.stop_now(args, t0):
                sys.exit(3)
    bar.close()


def phrase_loss(dm, te, clip, ms, rng, xt, sigma, cover, objects, tap, n: int, words: str = "shape") -> torch.Tensor:
    """The auxiliary loss on recolouring phrases (``--phrase-loss``): for the first ``n`` samples of the batch that
    have an object of its own shape, the phrase of train_toy.recolour_phrase() as the prompt, on the same noisy
    latents; its shape word's joint attention (blocks averaged) should fall on that object: train_toy.attention_loss
    (train_toy.phrase_rows says why the shape word only). No denoising loss
    on this pass: the world has no image of what such a phrase asks for, so only where its words look is taught,
    as the attention loss teaches it for the caption's words; what the phrase draws is left to the model."""
    rows, texts, named = train_toy.phrase_rows(rng, objects, n, words)
    if not rows:
        return xt.sum() * 0.0
    sel = torch.tensor(rows, device=xt.device)
    ctx, pooled = text_forward(te, train_toy.token_lists(clip, texts))
    forward(dm, xt[sel], sigma[sel], ms, ctx, pooled, tap)
    return train_toy.attention_loss(torch.stack(tap.take()).mean(0), named, cover[sel.to(cover.device)])


class FlowProbe:
    """Localisation per joint block on validation scenes (``toy_world.test_scene(i, "val")``, never a test
    scene) at sigma = the model's table entry PROBE_INDEX: each object's words ("red circle") as their own
    prompt, the image queries' probabilities on the words' tokens, heads averaged. Per block and over all
    blocks: the M1 share (of the top 10 % cells, the share on the object dilated one cell) and the ratio of
    the map's mean over the object to its mean over the other object; medians over scenes and objects. The same
    (keys ``phrase_all``, ``phrase_late``: all blocks, the second half that M1 reads) for the phrase that recolours
    the object: a colour no object has and its shape ("blue square" on a red square)."""

    def __init__(self, clip, model, device, work: Path, n_scenes=12):
        self.clip, self.model, self.device = clip, model, device
        self.scenes = [toy_world.test_scene(i, "val") for i in range(1000, 1000 + n_scenes)]
        self.work = work
        self._latents = None

    def latents(self):
        if self._latents is None:
            data = torch.load(self.work / "latents.pt", weights_only=False)
            ae = train_toy.new_vae_module(config=toy_model.FLOW_VAE_CONFIG)
            ae.load_state_dict(data["vae"])
            ae.eval()
            with torch.no_grad():
                z = train_toy.vae_posterior(ae, train_toy.to_tensor([s.image for s in self.scenes]))[0]
            self._latents = (z - SD3_SHIFT) * SD3_SCALE
        return self._latents

    @torch.no_grad()
    def run(self, dm, te) -> dict:
        from toy_world import dilate, downsample_mask

        dm.eval()
        te.eval()
        ms = self.model.model.model_sampling
        sigma = ms.sigmas.float()[PROBE_INDEX].view(1)
        x0s = self.latents()
        shares: dict[str, list[float]] = {}
        ratios: dict[str, list[float]] = {}
        for si, sc in enumerate(self.scenes):
            x0 = x0s[si:si + 1]
            g = torch.Generator().manual_seed(si)
            xt = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=g)
            absent = next(c for c in toy_world.COLOURS if c not in {o.colour for o in sc.objects})
            for oi, obj in enumerate(sc.objects):
                other = sc.objects[1 - oi]
                region = dilate(downsample_mask(obj.mask, CELLS) > 0, 1).flatten()
                inside = torch.from_numpy(downsample_mask(obj.mask, CELLS)).float().flatten()
                other_cov = torch.from_numpy(downsample_mask(other.mask, CELLS)).float().flatten()
                # the object's own words, and (prefix "phrase_") the phrase that recolours it: "<absent> <shape>"
                for prefix, words in (("", obj.words), ("phrase_", f"{absent} {obj.shape}")):
                    ctx, pooled = text_forward(te, train_toy.token_lists(self.clip, [words]))
                    tap = JointTap(ctx.shape[1], CELLS * CELLS)
                    forward(dm, xt.to(self.device), sigma.to(self.device), ms, ctx, pooled, tap)
                    maps = {f"block{b}": m[0].cpu() for b, m in enumerate(tap.maps)}
                    maps["all"] = torch.stack(list(maps.values())).mean(0)
                    if prefix:
                        maps = {"all": maps["all"], "late": torch.stack([m[0].cpu() for m in tap.maps[2:]]).mean(0)}
                    for key, m in maps.items():
                        share, ratio = train_toy.map_figures(m[:, [1, 2]].sum(-1), region, inside, other_cov)
                        shares.setdefault(prefix + key, []).append(share)
                        ratios.setdefault(prefix + key, []).append(ratio)
        out = {}
        for key in shares:
            out[f"m1_{key}"] = round(float(np.median(shares[key])), 3)
            out[f"ratio_{key}"] = round(float(np.median(ratios[key])), 3)
        return out


# ---------------------------------------------------------------------------------------------- export
def export(args, work: Path) -> None:
    data = torch.load(work / "latents.pt", weights_only=False)
    ck = torch.load(work / "dit.pt", weights_only=False)
    model = toy_model.build_flow_model()
    clip = toy_model.build_clip()
    model.model.diffusion_model.load_state_dict(ck["dit"])
    clip.cond_stage_model.clip_l.load_state_dict(ck["te"])
    ae = train_toy.new_vae_module(config=toy_model.FLOW_VAE_CONFIG)
    ae.load_state_dict(data["vae"])
    words = sorted({w for c in data["captions"] for w in c.split()} | {"a", "and"})
    ids = [t for lst in train_toy.token_lists(clip, [" ".join(words), ""]) for t in lst]
    state = train_toy.file_state(model, clip, ae, ids)
    vae_ck = torch.load(work / "vae.pt", weights_only=False)
    logs = [json.loads(line) for line in open(work / "log.jsonl")]
    last = {s: next((r for r in reversed(logs) if r["stage"] == s), None) for s in ("vae", "dit", "probe")}
    record = {
        "commands": [r["command"] for r in logs if r["stage"] == "start" and "--stage export" not in r["command"]],
        "seed": args.seed, "vae_steps": vae_ck["step"], "vae_minutes": round(vae_ck["minutes"], 1),
        **({"vae_from": vae_ck["source"]} if "source" in vae_ck else {}),
        "dit_steps": ck["step"], "dit_minutes": round(ck["minutes"], 1), "scenes": len(data["captions"]),
        "batch": args.batch, "machine": f"{platform.machine()} {platform.processor() or ''} "
                                        f"{os.cpu_count()} cores, torch {torch.__version__}, {args.device}",
        "final": last, "latent_scale_k": data["k"],
        "probes": [{k: v for k, v in r.items() if k not in ("stage", "time")} for r in logs if r["stage"] == "probe"],
    }
    train_toy.save_fp16(args.out, state, {"format": "ledits-toy-sd3", "record": json.dumps(record)})
    (args.out.parent / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


def main(argv=None) -> int:
    args = parse_args(argv)
    train_toy.check_fine_tune(args)
    toy_world.use_palette(args.palette)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    train_toy.log(args.work, {"stage": "start", "command": " ".join(["python", "scripts/train_toy_flow.py",
                                                                      *sys.argv[1:]]),
                              "threads": torch.get_num_threads()})
    hostenv.import_host_models()
    import comfy.latent_formats

    global toy_model, SD3_SCALE, SD3_SHIFT
    fmt = comfy.latent_formats.SD3()
    SD3_SCALE, SD3_SHIFT = fmt.scale_factor, fmt.shift_factor
    args.latent_format = (SD3_SCALE, SD3_SHIFT)
    toy_model = hostenv.import_pack_module("nodes.toy_model")
    train_toy.toy_model = toy_model
    args.vae_config = toy_model.FLOW_VAE_CONFIG
    torch.set_grad_enabled(True)
    if args.device.startswith("cuda"):  # TF32 matrix products: the toy models need no more precision in training
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    stages = ["vae", "encode", "dit", "export"] if args.stage == "all" else [args.stage]
    for stage in stages:
        if stage == "vae":
            train_toy.train_vae(args, args.work)
        elif stage == "encode":
            train_toy.encode(args, args.work)
        elif stage == "dit":
            train_dit(args, args.work)
        else:
            export(args, args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
