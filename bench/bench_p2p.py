"""Prompt Edit step time vs a bare host call of the same batch.

    python bench/bench_p2p.py [--family sd15] [--size full] [--px 256] [--steps 6] [--threads 1] [--device cpu]

Runs the real host in-process (COMFYUI_PATH) with a random-weight model of the family's real architecture.
Per step the prompt edit makes one batched call of [uncond, target, source] (the source row at the
inversion's state) with attention control; the bare side makes one call of the same three conds through
an unpatched clone and does nothing else. Steps are timed between the sampler's step callbacks; the first
step (model load, warm-up) is left out. Writes bench/P2P_RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="sd15", choices=["sd15", "sd2v", "sdxl"])
    p.add_argument("--size", default="full", choices=["tiny", "slim", "full"])
    p.add_argument("--px", type=int, default=256, help="image side in pixels (latent = px / 8)")
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=str(ROOT / "bench" / "P2P_RESULTS.md"))
    return p.parse_args()


def step_times(run) -> list[float]:
    """Seconds of each step after the first, from the sampler's step callbacks."""
    stamps = []
    run(lambda *_: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def main():
    args = parse()
    if args.threads:
        os.environ["COMFYUI_TEST_THREADS"] = str(args.threads)
    if args.device == "cpu":
        os.environ.setdefault("COMFYUI_TEST_ARGS", "--cpu --use-pytorch-cross-attention")
    else:
        os.environ.setdefault("COMFYUI_TEST_ARGS", "")
    import hostenv
    hostenv.import_host()
    hostenv.load_pack()
    import comfy.samplers
    import torch
    random_models = hostenv.import_random_models()
    guider_mod = hostenv.import_pack_module("nodes.guider")
    inversion_node = hostenv.import_pack_module("nodes.inversion_node")
    prompt_edit_node = hostenv.import_pack_module("nodes.prompt_edit_node")

    model, clip, _ = random_models.build_random_model(args.family, args.size, seed=0)
    side = args.px // 8
    latent = torch.randn((1, 4, side, side), generator=torch.Generator().manual_seed(0)) * 0.8
    source = "a cat sitting on a sofa"
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(source))
    inv = inversion_node.invert_latent(model, clip, {"samples": latent}, args.steps, 0.15, "dpmpp_2m_sde", "karras", 0,
                                       source=cond, source_scale=3.5)
    edit = prompt_edit_node.make_prompt_edit(clip, source, "a dog sitting on a sofa", scale=7.5, cross_replace=0.5,
                                             self_replace=0.5, blend_words="cat dog")
    zeros = torch.zeros(inv.latent_shape)
    sigmas = inv.record.sigmas.float()

    def p2p_run(callback):
        guider = guider_mod.edit_guider(model, inv, [], "intersect", edit)
        guider.sample(zeros, zeros, guider_mod.edit_sampler(inv, guider_mod.blend_step(guider)), sigmas,
                      callback=lambda *a: callback())

    class BareGuider(comfy.samplers.CFGGuider):
        def predict_noise(self, x, timestep, model_options=None, seed=None):
            out = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds["uncond"], self.conds["target"],
                                                                    self.conds["source"]], x, timestep,
                                                 model_options or {})
            return inv_base(out)

    def inv_base(out):
        return out[0] + 3.5 * (out[2] - out[0])  # any cheap combination: the model call is what is timed

    def bare_run(callback):
        guider = BareGuider(model.clone())
        guider.inner_set_conds({"uncond": inv.uncond, "target": edit.target_conditioning, "source": inv.source})
        guider.sample(zeros, zeros, guider_mod.edit_sampler(inv), sigmas, callback=lambda *a: callback())

    injected = int(round(0.5 * args.steps))
    rows = []
    for rep in range(2):
        for name, run in (("bare", bare_run), ("p2p", p2p_run)):
            times = step_times(run)
            rows.append((rep, name, times))
            print(f"rep {rep} {name}: " + " ".join(f"{t:.3f}" for t in times), flush=True)

    def med(name, lo, hi):
        return statistics.median(t for rep, n, times in rows if n == name for t in times[lo:hi])

    # times[j] is step j + 1
    bare = med("bare", 0, None)
    p2p_in, p2p_after = med("p2p", 0, injected - 1), med("p2p", injected - 1, None)
    report = [
        "# Prompt Edit: step time vs a bare call of the same batch",
        "",
        f"`python bench/bench_p2p.py --family {args.family} --size {args.size} --px {args.px} --steps {args.steps}"
        f"{' --threads ' + str(args.threads) if args.threads else ''} --device {args.device}`; "
        f"{os.cpu_count()} cores; host args `{os.environ.get('COMFYUI_TEST_ARGS')}`.",
        "",
        "Batch per step: uncond, target, source (3 rows, 1 image). Prompt edit: word swap, cross_replace 0.5, "
        "self_replace 0.5, local blend on two words. Median over 2 repetitions, first step of each run left out.",
        "",
        "| | seconds / step | vs bare |",
        "|---|---|---|",
        f"| bare host call of the 3-row batch | {bare:.3f} | 1.00x |",
        f"| prompt edit, steps with cross+self injection and local blend | {p2p_in:.3f} | {p2p_in / bare:.2f}x |",
        f"| prompt edit, steps after tau_c/tau_s (local blend only) | {p2p_after:.3f} | {p2p_after / bare:.2f}x |",
        "",
    ]
    Path(args.out).write_text("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    main()
