"""LEDITS++ benchmark, SDXL: our nodes on the real ComfyUI host vs diffusers' LEditsPPPipelineStableDiffusionXL,
both with the same random weights at the real SDXL architecture (UNet 2.6 B parameters, CLIP-L + OpenCLIP bigG
text encoders, SDXL's KL VAE), float32 on CPU.

    python bench/bench_sdxl.py                         # defaults: 256 px, N = 4, C = 2, 1 rep (about 15-20 min, 2 cores)
    python bench/bench_sdxl.py --model-size slim --size 128 --steps 2   # quick plumbing check (smaller UNet)

One SDXL side in fp32 is about 14 GB resident, so unlike bench_ledits.py (SD1.5, both workers alive) the
sides never overlap: each step below is its own process, started after the previous one has exited.
1. prepare: build the host's random SDXL (scripts/random_models.build_random_model("sdxl", size, seed)),
   compute reference outputs (one UNet call with pooled text + time ids, one prompt through each encoder,
   one VAE encode) and write the weights in diffusers' layout to --cache-dir (about 14 GB; reused when present).
2. ours: warm-up (untimed), then per rep: VAE encode + LEDITS Inversion, C LEDITS Concepts, LEDITS Sampler
   (intersect masks), then one bare host UNet call at batch 1+C. Exits.
3. diffusers: conversion check against step 1's reference outputs (max abs diffs), then per rep:
   pipe.invert(image) + pipe(editing_prompt=..., output_type="latent"); then bare UNet calls at batch 1+C
   (SDPA and the classic AttnProcessor its LEDITS++ pipeline installs). Exits.
Figures are printed and written to bench/SDXL_RESULTS.md and bench/sdxl_results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import bench_common as bc
import bench_ledits
import bench_report as br
from bench_ledits import LoadSampler, say

DEFAULT_CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "ledits_bench_cache_sdxl"
GIB = bc.GIB


class Worker(bench_ledits.Worker):
    """bench_ledits.Worker running this script's worker modes."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path):
        self.name = name
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, bufsize=1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="N, inversion and edit steps (default 4)")
    p.add_argument("--concepts", type=int, default=2, help="C (default 2)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--reps", type=int, default=1, help="repetitions per side (median reported; default 1)")
    p.add_argument("--seed", type=int, default=0, help="weights seed")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads in each worker")
    p.add_argument("--model-size", choices=["full", "slim"], default="full",
                   help="full: the real SDXL; slim: channel_mult 1 everywhere (plumbing checks only)")
    p.add_argument("--host-args", default="--cpu --use-pytorch-cross-attention", help="the host's command line")
    p.add_argument("--no-trim", dest="trim", action="store_false",
                   help="do not return freed heap to the OS (malloc_trim) before each measured phase (both sides)")
    p.add_argument("--no-diffusers-bare", dest="diffusers_bare", action="store_false",
                   help="skip diffusers' bare UNet calls at batch 1+C")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="converted weights (about 14 GB)")
    p.add_argument("--out", type=Path, default=bc.BENCH_DIR / "SDXL_RESULTS.md")
    p.add_argument("--json", type=Path, default=bc.BENCH_DIR / "sdxl_results.json")
    p.add_argument("--worker", choices=["ours", "diffusers", "prepare"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker_env(args) -> dict:
    env = dict(os.environ)
    env["COMFYUI_TEST_ARGS"] = args.host_args
    env["COMFYUI_TEST_THREADS"] = str(args.threads)
    env["PYTHONUNBUFFERED"] = "1"
    env["LEDITS_BENCH_TRIM"] = "1" if args.trim else "0"
    return env


def run_worker_main(args) -> int:
    import side_sdxl

    if args.worker == "prepare":
        bc.reply({"ok": True, "result": side_sdxl.prepare(str(args.cache_dir), args.seed, args.model_size,
                                                          args.threads)})
    elif args.worker == "ours":
        side_sdxl.ours_worker(args.seed, args.threads, "cpu", args.model_size)
    else:
        side_sdxl.diffusers_worker(str(args.cache_dir), args.threads, "cpu")
    return 0


def common_argv(args) -> list[str]:
    return ["--seed", str(args.seed), "--threads", str(args.threads), "--cache-dir", str(args.cache_dir),
            "--model-size", args.model_size]


def prepare(args, env, log_path) -> dict:
    ready = args.cache_dir / "READY"
    tag = f"sdxl {args.model_size} seed {args.seed}"
    if ready.is_file() and ready.read_text().strip() == tag:
        say(f"converted weights found in {args.cache_dir} ({tag})")
        return {"cached": True, "cache_dir": str(args.cache_dir)}
    ready.unlink(missing_ok=True)
    say(f"prepare: building the host's random SDXL ({args.model_size}) and writing it in diffusers' layout")
    t0 = time.perf_counter()
    w = Worker("prepare", ["--worker", "prepare", *common_argv(args)], env, log_path)
    r = w.read_reply()
    w.proc.wait()
    w.log.close()
    if not r["ok"]:
        raise RuntimeError(f"prepare failed: {r['error']}\n{r.get('traceback', '')}")
    r["result"]["wall_s"] = time.perf_counter() - t0
    return r["result"]


def start(name, args, env, log_path, results) -> Worker:
    w = Worker(name, ["--worker", name, *common_argv(args)], env, log_path)
    r = w.read_reply()
    if not r["ok"]:
        raise RuntimeError(f"{name} worker failed to start: {r['error']}")
    results["workers"][name] = r["result"]
    say(f"{name} worker ready: {json.dumps(r['result'])}")
    return w


def describe(side, r) -> str:
    return (f"{side}: encode {r['encode_s']:.1f} s, encode+invert {r['invert_s']:.1f} s, edit {r['edit_s']:.1f} s "
            f"(prompts {r['concept_encode_s']:.1f} s), steps {[round(s, 1) for s in r['edit_step_s']]}, "
            f"rows {r['rows_per_step']}, peak {br.run_peak(r) / GIB:.2f} GiB"
            + (f", bare {r['bare_s'][0]:.1f} s" if r.get("bare_s") else ""))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker_main(args)
    sys.path.insert(0, str(bc.REPO_ROOT / "scripts"))
    import hostenv

    reason = hostenv.host_missing_reason("run the benchmark")
    if reason:
        raise SystemExit(reason)
    t_start = time.perf_counter()
    env = worker_env(args)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    log_path = args.cache_dir / "workers.log"
    log_path.write_text("")
    loads = LoadSampler()
    loads.start()
    command = "python bench/bench_sdxl.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    results: dict = {"command": command, "args": {k: str(v) for k, v in vars(args).items()},
                     "machine": bc.machine_info(), "host_args": args.host_args,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "workers": {}, "phases": {},
                     "side_by_side": {"ours": [], "diffusers": []}}
    say(f"machine: {results['machine']['cpu']}, {results['machine']['logical_cpus']} logical CPUs, "
        f"torch {results['machine']['torch']}; worker logs in {log_path}")
    run_args = {"steps": args.steps, "n_concepts": args.concepts, "batch": 1, "size": args.size}

    def phase(name, t0, l0):
        results["phases"][name] = {"wall_s": time.perf_counter() - t0, "loadavg_samples": loads.samples[l0:]}

    try:
        t0, l0 = time.perf_counter(), len(loads.samples)
        results["prepare"] = prepare(args, env, log_path)
        phase("prepare", t0, l0)
        say(f"prepare: {json.dumps(results['prepare'])}")
        results["available_memory_ours"] = bc.available_memory()
        t0, l0 = time.perf_counter(), len(loads.samples)
        w = start("ours", args, env, log_path, results)
        try:
            say("ours: warm-up (one 64 px encode, 1-step inversion and UNet call, untimed)")
            results["ours_warmup"] = w.call("warmup")
            for rep in range(args.reps):
                say(f"ours rep {rep + 1}/{args.reps}: encode + inversion, edit, one bare UNet call at batch 1+C")
                r = w.call("run", **run_args, seed=rep, bare_repeats=1)
                results["side_by_side"]["ours"].append(r)
                say(describe("ours", r))
        finally:
            w.close()
        phase("ours", t0, l0)
        results["available_memory_diffusers"] = bc.available_memory()
        t0, l0 = time.perf_counter(), len(loads.samples)
        w = start("diffusers", args, env, log_path, results)
        try:
            say("diffusers: checking the converted weights against the host's outputs")
            results["check"] = w.call("check")
            say(f"check: {json.dumps(results['check'])}")
            for rep in range(args.reps):
                say(f"diffusers rep {rep + 1}/{args.reps}: invert + edit")
                r = w.call("run", **run_args, seed=rep)
                results["side_by_side"]["diffusers"].append(r)
                say(describe("diffusers", r))
            if args.diffusers_bare:
                results["diffusers_bare"] = {"batch": 1 + args.concepts, "size": args.size}
                for proc in ("sdpa", "classic"):
                    say(f"diffusers: one bare UNet call, batch {1 + args.concepts}, {proc} attention")
                    results["diffusers_bare"][proc] = w.call("bare", batch=1 + args.concepts, size=args.size,
                                                             processor=proc)[0]
                    say(f"diffusers bare {proc}: {results['diffusers_bare'][proc]:.1f} s")
        finally:
            w.close()
        phase("diffusers", t0, l0)
    finally:
        loads.stop.set()
        results["load_during_run"] = loads.summary()
        results["wall_s"] = time.perf_counter() - t_start
        args.json.write_text(json.dumps(results, indent=1))
    text = render(results)
    args.out.write_text(text)
    print(text, flush=True)
    say(f"wrote {args.out} and {args.json} in {results['wall_s'] / 60:.1f} min")
    return 0


# ---------------------------------------------------------------------------------------------- report

def _load(samples) -> str:
    s = [v for v in samples if v == v]
    if not s:
        return "–"
    return f"min {min(s):.2f}, mean {sum(s) / len(s):.2f}, max {max(s):.2f}"


def render(res: dict) -> str:
    a, m = res["args"], res["machine"]
    sbs = res["side_by_side"]
    o, d = br.side_summary(sbs["ours"]), br.side_summary(sbs["diffusers"])
    for summary, runs in ((o, sbs["ours"]), (d, sbs["diffusers"])):
        if runs:
            summary["median_step_s"] = br.med([br.med(r["edit_step_s"]) for r in runs])
    n, c, size = int(a["steps"]), int(a["concepts"]), int(a["size"])
    w = []
    w.append(f"# LEDITS++ benchmark, SDXL: ours (ComfyUI nodes) vs diffusers {m.get('diffusers')}\n")
    w.append(f"Generated by `{res['command']}` on {res['started']}; wall time {res['wall_s'] / 60:.1f} min "
             f"(prepare {res['phases'].get('prepare', {}).get('wall_s', 0) / 60:.1f}, "
             f"ours {res['phases'].get('ours', {}).get('wall_s', 0) / 60:.1f}, "
             f"diffusers {res['phases'].get('diffusers', {}).get('wall_s', 0) / 60:.1f}). "
             f"Raw numbers: `bench/sdxl_results.json`. Script: `bench/bench_sdxl.py` (sides in `bench/side_sdxl.py`).\n")
    ls = res["load_during_run"]
    w.append("| machine | |\n|---|---|")
    w.append(f"| CPU | {m['cpu']} ({', '.join(m['isa'])}) |")
    w.append(f"| cores | {m['logical_cpus']} logical; torch threads per worker: {a['threads']} |")
    w.append(f"| memory | {m['memory_total'] / GIB:.1f} GiB |")
    w.append(f"| software | Python {m['python']}, torch {m['torch']}, diffusers {m.get('diffusers')}, "
             f"ComfyUI host args `{res['host_args']}` |")
    w.append(f"| load average (1 min) during the run | min {ls['min']:.2f}, mean {ls['mean']:.2f}, max {ls['max']:.2f} "
             f"({ls['samples']} samples every 5 s; {m['logical_cpus']} cores: above ~1 means other processes competed "
             "for the CPU) |")
    for ph in ("prepare", "ours", "diffusers"):
        if ph in res["phases"]:
            w.append(f"|   during {ph} | {_load(res['phases'][ph]['loadavg_samples'])} |")
    w.append("")
    wo, wd = res["workers"].get("ours", {}), res["workers"].get("diffusers", {})
    w.append(f"Model: random weights at the {'real SDXL architecture' if a['model_size'] == 'full' else 'SLIM SDXL (channel_mult 1: NOT the real architecture)'}"
             f" (UNet {wo.get('unet_params', 0) / 1e9:.2f} B parameters, CLIP-L + OpenCLIP bigG text encoders, "
             "SDXL's KL VAE), built by "
             f"`scripts/random_models.build_random_model(\"sdxl\", \"{a['model_size']}\", {a['seed']})` through the host "
             "in a prepare process, converted to diffusers' layout (host UNet key map `comfy.utils.unet_to_diffusers`, "
             "diffusers' `convert_ldm_vae_checkpoint`, both text encoders as the host keeps them, bigG with its "
             "`text_projection`). Weights resident: ours "
             f"{wo.get('weights_bytes', 0) / GIB:.2f} GiB (UNet {wo.get('unet_dtype')}, text encoders "
             f"{', '.join(wo.get('clip_dtypes', {}))}, VAE {wo.get('vae_dtype')}), diffusers "
             f"{wd.get('weights_bytes', 0) / GIB:.2f} GiB (all float32). The two sides run one after the other, each in "
             "its own process (one side is about 14 GB; both at once would not fit in this machine's memory), so they "
             "did not see the same background load; see the load rows above.\n")
    ck = res.get("check")
    if ck:
        w.append("## Same weights on both sides\n")
        w.append("| output | max abs diff ours vs diffusers | scale |\n|---|---|---|")
        lat = ck.get("unet_check_latent", [1, 4, 64, 64])
        w.append(f"| one UNet call ({lat[2]}x{lat[3]} latent, t=500, a prompt's 77 x 2048 context + pooled bigG "
                 f"text embeds + time ids ({8 * lat[2]}, {8 * lat[3]}, 0, 0, {8 * lat[2]}, {8 * lat[3]}); diffusers SDPA) "
                 f"| {ck['unet_max_abs_diff']:.2e} | max abs of the output {ck['unet_ref_max_abs']:.2f} |")
        w.append(f"| CLIP-L penultimate hidden state (77 x 768) | {ck['text_l_max_abs_diff']:.2e} | "
                 f"max abs of the context {ck['text_ref_max_abs']:.1f}; token ids equal: {ck['tokens_l_equal']} |")
        w.append(f"| OpenCLIP bigG penultimate hidden state (77 x 1280) | {ck['text_g_max_abs_diff']:.2e} | "
                 f"token ids equal (\"!\" padding): {ck['tokens_g_equal']} |")
        w.append(f"| bigG pooled + text_projection (1280) | {ck['pooled_g_max_abs_diff']:.2e} | |")
        w.append(f"| VAE encode (64 x 64 image, posterior mode) | {ck['vae_max_abs_diff']:.2e} | |")
        tec = wo.get("clip_dtypes", {})
        if any("16" in k for k in tec):
            w.append(f"\nThe host stores its text encoder weights as {', '.join(tec)} on CPU (its choice for a loaded "
                     "checkpoint; it computes in float32); diffusers gets those same values as float32 tensors.")
        w.append("")
    w.append(f"## Side by side: {size} px, N = {n} steps, C = {c} concepts, batch 1, {a['reps']} rep(s) per side\n")
    w.append(f"Same work on both sides: VAE encode + edit-friendly inversion (SDE-DPM-Solver++ 2M, skip {bc.SKIP}), "
             f"then an edit with the concepts {', '.join(repr(x['text']) + (' (reversed)' if x['reverse'] else '') for x in bc.concepts(c))} "
             "(scale 5, threshold 0.9, intersect masks), same N. No final VAE decode on either side (diffusers: "
             "`output_type=\"latent\"`). diffusers runs as a user would with its defaults (`invert()` with an empty "
             "source prompt, `num_zero_noise_steps=3`, and the reconstruction decode `invert()` always does).\n")
    w.append("| | ours | diffusers | ours / diffusers |\n|---|---|---|---|")

    def row(label, key, spec=".1f", scale=1.0, unit=" s"):
        vo = o.get(key)
        vd = d.get(key)
        vo = None if vo is None else vo / scale
        vd = None if vd is None else vd / scale
        w.append(f"| {label} | {br.fmt(vo, spec, unit)} | {br.fmt(vd, spec, unit)} | {br.fmt(br.ratio(vo, vd), '.2f', 'x')} |")

    row("VAE encode (included in the next row)", "encode_s")
    row("VAE decode of the reconstruction (diffusers' invert() always does it; included in the next row)", "decode_s")
    row("**VAE encode + inversion**", "invert_s")
    row("seconds per inversion step, steady (median of steps 2..N)", "invert_step_s")
    row("prompt encoding of the C concepts (in the edit)", "prompt_s")
    row("edit (C prompts encoded + N steps)", "edit_s")
    row("**seconds per edit step, median** (of all N steps)", "median_step_s")
    row("seconds per edit step, mean (edit minus prompt encoding, / N)", "step_s")
    row("**total (encode + inversion + edit)**, diffusers as it runs", "total_s")
    row("total, same work (diffusers without its reconstruction decode)", "total_nodecode_s")
    row("**peak resident memory during the run**", "peak_rss", ".2f", GIB, " GiB")
    row("resident memory with the model loaded (start of a run)", "start_rss", ".2f", GIB, " GiB")
    for label, runs_key in (("UNet batch rows per inversion step", "invert_rows_per_step"),
                            ("UNet batch rows per edit step", "rows_per_step")):
        ro = sbs["ours"][0][runs_key] if sbs["ours"] else "–"
        rd = sbs["diffusers"][0][runs_key] if sbs["diffusers"] else "–"
        w.append(f"| {label} | {ro} | {rd} | |")
    for side in ("ours", "diffusers"):
        for i, r in enumerate(sbs[side]):
            w.append(f"\n{side} run {i + 1}: edit step durations {[round(s, 2) for s in r['edit_step_s']]} s, "
                     f"inversion step durations {[round(s, 2) for s in r['invert_step_s']]} s; load average "
                     f"before/after {r['loadavg_before'][0]:.2f}/{r['loadavg_after'][0]:.2f}; peak by phase "
                     + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in r["invert_mem"].get("phases", {}).items())
                     + f", edit {r['edit_mem']['peak_rss'] / GIB:.2f} GiB.")
    w.append("")
    bare = [r["bare_s"][0] for r in sbs["ours"] if r.get("bare_s")]
    if bare:
        per = [br.med(r["edit_step_s"]) / r["bare_s"][0] for r in sbs["ours"] if r.get("bare_s")]
        w.append(f"**Ours' edit step vs one bare host UNet call** (`BaseModel.apply_model`, batch 1+C = {1 + c}, same "
                 f"shapes, 2048-wide context + y, `{res['host_args']}`, measured right after each of our runs): bare "
                 f"call {br.med(bare):.1f} s; median edit step / bare call = {br.med(per):.3f}x.\n")
    db = res.get("diffusers_bare")
    if db:
        w.append(f"diffusers' own bare UNet call at batch {db['batch']}: {db['sdpa']:.1f} s with its default SDPA "
                 f"processor, {db['classic']:.1f} s with the classic `AttnProcessor`; its median edit step is "
                 f"{br.ratio(d.get('median_step_s'), db['classic']):.3f}x the classic call and "
                 f"{br.ratio(d.get('median_step_s'), db['sdpa']):.3f}x the SDPA call.\n")
    pr = res.get("prepare", {})
    w.append("## How it was obtained\n")
    w.append(f"- Command: `{res['command']}` (environment: `COMFYUI_PATH` pointing at the host checkout; the workers "
             f"get `COMFYUI_TEST_ARGS=\"{res['host_args']}\"`), torch threads per worker {a['threads']}.")
    w.append(f"- Prepare (own process): {'reused cached weights from ' + pr['cache_dir'] if pr.get('cached') else 'built in %.0f s, one host UNet call at 64x64 %.1f s, %.1f GB written to %s, %.1f min in all' % (pr.get('build_s', 0), pr.get('host_unet_call_s', 0), pr.get('bytes_written', 0) / 1e9, pr.get('cache_dir'), pr.get('wall_s', 0) / 60)}.")
    w.append(f"- Ours: worker ready after {wo.get('import_s', 0):.0f} s imports + {wo.get('build_s', 0):.0f} s building "
             f"the random model ({wo.get('rss_after_build', 0) / GIB:.1f} GiB resident); untimed warm-up "
             f"{res.get('ours_warmup', {}).get('seconds', 0):.0f} s; attention `{wo.get('attention')}`.")
    w.append(f"- diffusers: worker ready after {wd.get('load_s', 0):.0f} s loading ({wd.get('rss_after_load', 0) / GIB:.1f} "
             "GiB resident); its first measured run follows the conversion check (which includes one UNet call), "
             "no other warm-up.")
    w.append("- Per step times: ours from the host's sampler callback, diffusers from `callback_on_step_end`; inversion "
             "steps from the UNet calls. Peak memory: the process's VmHWM, reset (`/proc/self/clear_refs`) at the start "
             "of each phase after `malloc_trim`, so it includes the resident weights but not loading transients.")
    w.append("- Median of the reps per side (a single rep means single measurements: no spread is known).")
    w.append("")
    return "\n".join(w)


if __name__ == "__main__":
    sys.exit(main())
