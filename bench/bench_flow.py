"""LEDITS++ on a flow transformer at the real SD3.5-medium width: one edit step against one bare host call.

Builds SD3.5-medium (1536 wide, 24 heads, RMS q/k norm, dual attention in its first blocks) with random
weights through the host's own classes (tests/flow_models.py, "real" size: fewer joint blocks than the
published 24, set with --blocks), conditionings of the real text shapes by hand (154 x 4096 context,
2048 pooled), inverts a random latent and runs an edit with C concepts (masks: --mask-mode); before each step it
times the host's own batched model call (comfy.samplers.calc_cond_batch) on the same [uncond, C concepts]
batch, x and sigma, then the edit's step (that call plus LEDITS++ guidance). Prints the per-step times, the ratio edit step / bare call, and the resident
memory after each step (flat in steps: nothing per step is kept but the masks the user asked for).

    python bench/bench_flow.py [--blocks 4] [--size 256] [--steps 6] [--concepts 2]

Runs in-process on the host found as the tests find it ($COMFYUI_PATH, ~/ComfyUI, ../shared/); CPU here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))

import bench_common as bc  # noqa: E402
import hostenv  # noqa: E402


class HandClip:
    """Just what LEDITS Inversion asks of a CLIP: the empty prompt's conditioning (real SD3 shapes)."""

    def __init__(self, flow, family):
        self.flow, self.family = flow, family

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        return self.flow.conditioning(self.family, seed=7 if not text else hash(text) % 1000)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=4, help="joint blocks (the published model has 24)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--concepts", type=int, default=2)
    p.add_argument("--mask-mode", default="intersect", help="intersect (M1 from joint attention and M2) or noise")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    hostenv.import_host()
    import comfy.samplers

    spec = importlib.util.spec_from_file_location("flow_models", ROOT / "tests" / "flow_models.py")
    flow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flow)
    hostenv.load_pack()
    inversion_node = hostenv.import_pack_module("nodes.inversion_node")
    sampler_nodes = hostenv.import_pack_module("nodes.sampler_nodes")
    guider_mod = hostenv.import_pack_module("nodes.guider")
    objects = hostenv.import_pack_module("nodes.objects")

    family = "sd35m"
    t0 = time.perf_counter()
    model = flow.build_model(family, "real", seed=0, blocks=args.blocks)
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    print(f"[bench_flow] SD3.5-medium layout, real width, {args.blocks} joint blocks: {params / 1e6:.0f} M parameters "
          f"(built in {time.perf_counter() - t0:.0f} s); {args.size} px, {args.steps} steps, {args.concepts} concepts, "
          f"{torch.get_num_threads()} threads")
    side = args.size // 8
    latent = torch.randn((1, 16, side, side), generator=torch.Generator().manual_seed(0))
    clip = HandClip(flow, family)
    t0 = time.perf_counter()
    inv = inversion_node.invert_latent(model, clip, {"samples": latent}, args.steps, 0.0, "dpmpp_2m_sde", "simple", 0)
    print(f"[bench_flow] inversion: {time.perf_counter() - t0:.1f} s")
    concepts = []
    for i in range(args.concepts):
        cond = flow.conditioning(family, seed=100 + i)
        concepts.append(objects.LeditsConcept(f"concept {i}", cond, (1, 2), int(cond[0][0].shape[1]), 5.0, 0.9,
                                              bool(i % 2)))

    # One edit. Before each step's guidance, the host's own batched call on the same batch (its conds as the
    # guider converted them, the same x and sigma) is timed; then the guider's step (that call + guidance).
    guider = guider_mod.edit_guider(model, inv, concepts, args.mask_mode)
    steps, bare, rss = [], [], []
    guided_step = guider.predict_noise

    def timed_step(x, timestep, model_options=None, seed=None):
        conds = [guider.conds["uncond"]] + [guider.conds[f"concept_{i}"] for i in range(args.concepts)]
        t = time.perf_counter()
        comfy.samplers.calc_cond_batch(guider.inner_model, conds, x, timestep, model_options or {})
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = guided_step(x, timestep, model_options, seed)
        steps.append(time.perf_counter() - t)
        rss.append(bc.rss_bytes())
        return out
    guider.predict_noise = timed_step
    zeros = torch.zeros(inv.latent_shape)
    guider.sample(zeros, zeros, guider_mod.edit_sampler(inv), inv.record.sigmas.float(), disable_pbar=True, seed=0)
    sampler_nodes  # noqa: B018  (imported so the pack's node modules are what the host loaded)
    step_med, bare_med = bc.median(steps[1:] or steps), bc.median(bare[1:] or bare)
    print("[bench_flow] edit step s:   " + " ".join(f"{s:.2f}" for s in steps))
    print("[bench_flow] bare call s:   " + " ".join(f"{s:.2f}" for s in bare))
    print(f"[bench_flow] median edit step / median bare host call (batch {1 + args.concepts}): "
          f"{step_med:.2f} s / {bare_med:.2f} s = {step_med / bare_med:.3f}x")
    print("[bench_flow] resident memory after each step (GiB): " + " ".join(f"{r / bc.GIB:.2f}" for r in rss))
    print(f"[bench_flow] growth from step 2 to the last: {(rss[-1] - rss[min(1, len(rss) - 1)]) / 2**20:.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"blocks": args.blocks, "size": args.size, "steps": args.steps,
                                         "concepts": args.concepts, "mask_mode": args.mask_mode, "params_m": params / 1e6, "edit_step_s": steps,
                                         "bare_s": bare, "ratio": step_med / bare_med, "rss_bytes": rss,
                                         "machine": bc.machine_info()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
