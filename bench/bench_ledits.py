"""LEDITS++ benchmark: our nodes on the real ComfyUI host vs diffusers' LEditsPPPipelineStableDiffusion,
both with the same random weights at the real SD1.5 architecture (512 x 512 image, 64 x 64 latent).

    python bench/bench_ledits.py                      # CPU defaults (about 15 min on an idle 2-core machine)
    python bench/bench_ledits.py --reps 3 --steps 10  # more work
    python bench/bench_ledits.py --device cuda        # GPU machines (untested, see RESULTS.md)

What it does (every number it prints goes to bench/RESULTS.md and bench/results.json):
1. prepare: build the host's random SD1.5 (scripts/random_models.build_random_model("sd15", "full", seed)),
   write the same weights in diffusers' layout (cached in --cache-dir) and reference outputs.
2. two worker processes, one per side (so each side's peak memory is its own): "ours" (host + pack) and
   "diffusers" (diffusers + transformers only). diffusers checks the converted weights against the host's
   outputs (one UNet call, one prompt, one VAE encode: max abs differences).
3. attention: one bare host UNet call with the attention each host flag selects on CPU.
4. side by side, alternating sides, --reps times: VAE encode + inversion (N steps), then an edit with C
   concepts (intersect masks), same N, skip, C; after each of our runs one bare host UNet call at batch 1+C.
5. a cProfile of our edit steps, by component.
6. scaling (ours only): concepts, batch, inactive concepts (warmup), steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import bench_common as bc

DEFAULT_CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "ledits_bench_cache"


# ---------------------------------------------------------------------------------------------- workers

class Worker:
    """A worker subprocess: one JSON command per line on stdin, replies prefixed lines on stdout."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path):
        self.name = name
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, bufsize=1)

    def read_reply(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(bc.REPLY_PREFIX):
                return json.loads(line[len(bc.REPLY_PREFIX):])
            self.log.write(line)
        raise RuntimeError(f"worker {self.name} exited (code {self.proc.wait()}); see {self.log.name}")

    def call(self, op: str, **args):
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        r = self.read_reply()
        if not r["ok"]:
            raise RuntimeError(f"{self.name}.{op} failed: {r['error']}\n{r.get('traceback', '')}")
        return r["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every few seconds while the benchmark runs."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.samples.append(bc.load_average()[0])
            self.stop.wait(self.every)

    def summary(self) -> dict:
        s = self.samples or [float("nan")]
        return {"min": min(s), "mean": statistics.fmean(s), "max": max(s), "samples": len(s)}


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {bc.load_average()[0]:.2f}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="N, side by side (default 5)")
    p.add_argument("--concepts", type=int, default=2, help="C, side by side (default 2)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels, side by side (default 512)")
    p.add_argument("--reps", type=int, default=2, help="repetitions per side, alternating (median reported)")
    p.add_argument("--seed", type=int, default=0, help="weights seed")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads in each worker")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: both sides on the GPU (untested here: written on a CPU-only machine)")
    p.add_argument("--host-args", default=None,
                   help="the host's command line (default '--cpu --use-pytorch-cross-attention' on cpu, '' on cuda)")
    p.add_argument("--scaling-size", type=int, default=256, help="image size of the concept/batch/warmup scaling runs")
    p.add_argument("--scaling-steps", type=int, default=2, help="N of the concept/batch/warmup scaling runs")
    p.add_argument("--scaling-concepts", default="1,2,4,8")
    p.add_argument("--n-scaling-size", type=int, default=64, help="image size of the steps scaling runs")
    p.add_argument("--n-scaling-steps", default="10,25,50")
    p.add_argument("--profile-steps", type=int, default=2, help="edit steps profiled (0: no profile)")
    p.add_argument("--no-diffusers", action="store_true", help="our side only")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--no-trim", dest="trim", action="store_false",
                   help="do not return freed heap to the OS (malloc_trim) before each measured phase (both sides)")
    p.add_argument("--prototypes", action="store_true",
                   help="also measure the suggested change(s) to the pack, monkeypatched in our worker (about 2 min)")
    p.add_argument("--no-diffusers-bare", dest="diffusers_bare", action="store_false",
                   help="skip the bare diffusers UNet calls (SDPA and classic attention) at batch 1+C")
    p.add_argument("--no-flags", action="store_true", help="skip the attention-flag probe")
    p.add_argument("--mode", choices=["auto", "alternate", "sequential"], default="auto",
                   help="alternate: both workers alive, sides take turns; sequential: one worker at a time "
                        "(less memory). auto: alternate when memory allows")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="converted weights (about 4.3 GB)")
    p.add_argument("--out", type=Path, default=bc.BENCH_DIR / "RESULTS.md")
    p.add_argument("--json", type=Path, default=bc.BENCH_DIR / "results.json")
    p.add_argument("--worker", choices=["ours", "diffusers", "prepare"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker_env(args) -> dict:
    env = dict(os.environ)
    host_args = args.host_args
    if host_args is None:
        host_args = "--cpu --use-pytorch-cross-attention" if args.device == "cpu" else ""
    env["COMFYUI_TEST_ARGS"] = host_args
    env["COMFYUI_TEST_THREADS"] = str(args.threads)
    env["PYTHONUNBUFFERED"] = "1"
    env["LEDITS_BENCH_TRIM"] = "1" if args.trim else "0"
    return env


def common_argv(args) -> list[str]:
    return ["--seed", str(args.seed), "--threads", str(args.threads), "--device", args.device,
            "--cache-dir", str(args.cache_dir)]


def run_worker_main(args) -> int:
    if args.worker == "prepare":
        import side_ours

        bc.reply({"ok": True, "result": side_ours.prepare(str(args.cache_dir), args.seed)})
    elif args.worker == "ours":
        import side_ours

        side_ours.worker(args.seed, args.threads, args.device)
    else:
        import side_diffusers

        side_diffusers.worker(str(args.cache_dir), args.threads, args.device)
    return 0


def prepare(args, env, log_path) -> dict:
    ready = args.cache_dir / "READY"
    if ready.is_file() and ready.read_text().strip() == f"sd15 full seed {args.seed}":
        say(f"converted weights found in {args.cache_dir}")
        return {"cached": True, "cache_dir": str(args.cache_dir)}
    ready.unlink(missing_ok=True)
    say("prepare: building the host's random SD1.5 and writing it in diffusers' layout")
    w = Worker("prepare", ["--worker", "prepare", *common_argv(args)], env, log_path)
    r = w.read_reply()
    w.proc.wait()
    w.log.close()
    if not r["ok"]:
        raise RuntimeError(f"prepare failed: {r['error']}\n{r.get('traceback', '')}")
    return r["result"]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker_main(args)
    sys.path.insert(0, str(bc.REPO_ROOT / "scripts"))
    import hostenv  # the host lookup only ($COMFYUI_PATH, ~/ComfyUI, ../shared/ComfyUI); workers import the host

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
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": bc.machine_info(),
                     "host_args": env["COMFYUI_TEST_ARGS"], "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    say(f"machine: {results['machine']['cpu']}, {results['machine']['logical_cpus']} logical CPUs, "
        f"torch {results['machine']['torch']}; worker logs in {log_path}")
    with_diffusers = not args.no_diffusers
    if with_diffusers:
        results["prepare"] = prepare(args, env, log_path)
    avail = bc.available_memory()
    mode = args.mode
    if mode == "auto":
        mode = "alternate" if (avail is None or avail > 16 * bc.GIB) else "sequential"
    results["mode"] = mode if with_diffusers else "ours only"
    results["available_memory_start"] = avail
    say(f"mode: {results['mode']} (available memory {avail / bc.GIB if avail else float('nan'):.1f} GiB)")

    workers: dict[str, Worker] = {}

    def start(side):
        argv = ["--worker", side, *common_argv(args)]
        workers[side] = Worker(side, argv, env, log_path)

    def ready(side):
        r = workers[side].read_reply()
        if not r["ok"]:
            raise RuntimeError(f"{side} worker failed to start: {r['error']}")
        results.setdefault("workers", {})[side] = r["result"]
        say(f"{side} worker ready: {json.dumps(r['result'])}")

    def stop(side):
        if side in workers:
            workers.pop(side).close()

    sbs = {"ours": [], "diffusers": []}
    run_args = {"steps": args.steps, "n_concepts": args.concepts, "batch": 1, "size": args.size}
    try:
        start("ours")
        if with_diffusers and mode == "alternate":
            start("diffusers")
        ready("ours")
        if "diffusers" in workers:
            ready("diffusers")
        say("ours: warm-up (one small encode, inversion and UNet call, untimed)")
        workers["ours"].call("warmup")
        if not args.no_flags and args.device == "cpu":
            say("attention flags: one bare host UNet call (batch 1) with each host attention")
            results["attention_flags"] = workers["ours"].call("attention_flags", batch=1, size=args.size)
            say(json.dumps(results["attention_flags"]))
        if "diffusers" in workers:
            say("diffusers: checking the converted weights against the host's outputs")
            results["check"] = workers["diffusers"].call("check")
            say(json.dumps(results["check"]))
        for rep in range(args.reps):
            order = ["ours", "diffusers"] if rep % 2 == 0 else ["diffusers", "ours"]
            for side in order:
                if side not in workers:
                    continue
                say(f"side by side rep {rep + 1}/{args.reps}: {side}")
                r = workers[side].call("run", **run_args, seed=rep, bare_repeats=1 if side == "ours" else 0)
                sbs[side].append(r)
                say(f"{side}: invert {r['invert_s']:.1f} s, edit {r['edit_s']:.1f} s, "
                    f"peak {max(r['invert_mem']['peak_rss'], r['edit_mem']['peak_rss']) / bc.GIB:.2f} GiB"
                    + (f", bare {r['bare_s'][0]:.1f} s" if r.get("bare_s") else ""))
        if "diffusers" in workers and args.diffusers_bare:
            results["diffusers_bare"] = diffusers_bare(args, workers["diffusers"])
        if args.profile_steps:
            say(f"profile: {args.profile_steps} edit steps of ours under cProfile")
            results["profile"] = workers["ours"].call("profile", steps=args.profile_steps, n_concepts=args.concepts,
                                                      size=args.size)
        stop("diffusers")
        if with_diffusers and mode == "sequential":
            start("diffusers")
            ready("diffusers")
            results["check"] = workers["diffusers"].call("check")
            for rep in range(args.reps):
                say(f"side by side rep {rep + 1}/{args.reps}: diffusers")
                sbs["diffusers"].append(workers["diffusers"].call("run", **run_args, seed=rep))
            if args.diffusers_bare:
                results["diffusers_bare"] = diffusers_bare(args, workers["diffusers"])
            stop("diffusers")
        results["side_by_side"] = sbs
        if args.prototypes:
            results["prototypes"] = prototypes(args, workers["ours"])
        if not args.no_scaling:
            results["scaling"] = scaling(args, workers["ours"])
    finally:
        for side in list(workers):
            stop(side)
        loads.stop.set()
    results["load_during_run"] = loads.summary()
    results["wall_s"] = time.perf_counter() - t_start
    args.json.write_text(json.dumps(results, indent=1))
    import bench_report

    args.out.write_text(bench_report.render(results))
    say(f"wrote {args.out} and {args.json} in {results['wall_s'] / 60:.1f} min")
    return 0


def prototypes(args, ours: Worker) -> dict:
    """The 'reuse the inversion's unconditional predictions' prototype (side_ours.reuse_inversion_uncond)."""
    out = {}
    size, steps, c = args.scaling_size, 4, 2
    for label, warm in (("all concepts from step 0", None), ("both concepts warmup 0.5", [0.5, 0.5])):
        say(f"prototype reuse_inversion_uncond: {label}, {size} px, N={steps}, C={c}")
        out[label] = ours.call("prototype", steps=steps, n_concepts=c, size=size, warmups=warm)
    return out


def diffusers_bare(args, ref: Worker) -> dict:
    out = {"batch": 1 + args.concepts, "size": args.size}
    for proc in ("sdpa", "classic"):
        say(f"diffusers: one bare UNet call, batch {1 + args.concepts}, {proc} attention")
        out[proc] = ref.call("bare", batch=1 + args.concepts, size=args.size, processor=proc)[0]
    return out


def scaling(args, ours: Worker) -> dict:
    out: dict = {"size": args.scaling_size, "steps": args.scaling_steps, "concepts": [], "batch": [], "warmup": [],
                 "n": [], "n_size": args.n_scaling_size}
    size, steps = args.scaling_size, args.scaling_steps
    counts = [int(c) for c in args.scaling_concepts.split(",") if c]
    for i, c in enumerate(counts):
        say(f"scaling: C={c} at {size} px, N={steps}")
        out["concepts"].append(ours.call("run", steps=steps, n_concepts=c, batch=1, size=size, seed=0,
                                         bare_repeats=1, invert=(i == 0)))
    c2 = 2 if 2 in counts else counts[0]
    say(f"scaling: C={c2}, the last concept with warmup 0.5 (inactive in the first half), same inversion")
    warm = [0.0] * (c2 - 1) + [0.5]
    out["warmup"].append(ours.call("run", steps=steps, n_concepts=c2, batch=1, size=size, seed=0, warmups=warm,
                                   invert=False))
    for batch in (2,):
        say(f"scaling: batch {batch}, C={c2} at {size} px, N={steps}")
        out["batch"].append(ours.call("run", steps=steps, n_concepts=c2, batch=batch, size=size, seed=0,
                                      bare_repeats=1, keep=False))
    for n in [int(v) for v in args.n_scaling_steps.split(",") if v]:
        say(f"scaling: N={n} at {args.n_scaling_size} px, C=1")
        out["n"].append(ours.call("run", steps=n, n_concepts=1, batch=1, size=args.n_scaling_size, seed=0,
                                  keep=False))
    return out


if __name__ == "__main__":
    sys.exit(main())
