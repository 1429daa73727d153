"""Shared helpers of the LEDITS++ benchmark: memory, timing, machine facts, the worker protocol.

Memory: on Linux, writing "5" to /proc/self/clear_refs resets the process's peak resident set (VmHWM,
which is also what getrusage's ru_maxrss reports), so a worker that stays alive between runs can still
report the peak of each run separately. Where that is not possible, the process peak is reported.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

GIB = 2**30
REPLY_PREFIX = "@@BENCH "
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SAMPLE_IMAGE = REPO_ROOT / "assets" / "ledits_sample.png"

# The side-by-side edit: two concepts, one added and one removed, with the paper's defaults.
CONCEPTS = [
    {"text": "sunglasses", "scale": 5.0, "threshold": 0.9, "reverse": False},
    {"text": "a beard", "scale": 5.0, "threshold": 0.9, "reverse": True},
    {"text": "a red hat", "scale": 5.0, "threshold": 0.9, "reverse": False},
    {"text": "a smile", "scale": 5.0, "threshold": 0.9, "reverse": False},
    {"text": "glasses", "scale": 5.0, "threshold": 0.9, "reverse": True},
    {"text": "curly hair", "scale": 5.0, "threshold": 0.9, "reverse": False},
    {"text": "a necklace", "scale": 5.0, "threshold": 0.9, "reverse": False},
    {"text": "snow", "scale": 5.0, "threshold": 0.9, "reverse": False},
]
SKIP = 0.15

# diffusers' AutoencoderKL config for SD's VAE (what convert_ldm_vae_checkpoint needs; also used to build it).
VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 512,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "act_fn": "silu",
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}


def concepts(count: int, warmups: list[float] | None = None) -> list[dict]:
    """The first `count` benchmark concepts; warmups (fractions) per concept if given."""
    if count > len(CONCEPTS):
        raise ValueError(f"at most {len(CONCEPTS)} concepts are defined for the benchmark")
    out = [dict(c, warmup=0.0) for c in CONCEPTS[:count]]
    for c, w in zip(out, warmups or [], strict=False):
        c["warmup"] = float(w)
    return out


# ---------------------------------------------------------------------------------------------- memory

def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def rss_bytes() -> int:
    """Current resident set size."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """Peak resident set size since the process started or since the last reset_peak_rss()."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return kib * 1024


def reset_peak_rss() -> bool:
    """Reset the peak resident set to the current one (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def process_peak_rss_bytes() -> int:
    """getrusage's ru_maxrss in bytes (since the last reset on Linux, see module doc)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def trim_heap() -> int:
    """Return freed heap memory to the OS (glibc malloc_trim); bytes of RSS released, 0 where unavailable."""
    import ctypes
    import ctypes.util

    before = rss_bytes()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return 0
    return max(0, before - rss_bytes())


TRIM = os.environ.get("LEDITS_BENCH_TRIM", "1") == "1"
"""Trim the heap before each measured phase (both sides alike; see bench_ledits.py --no-trim)."""


class PeakMeter:
    """Peak RSS of a block of work: resets the peak on entry (where possible), reads it on exit.

    With TRIM, freed heap is first returned to the OS, so the start RSS and the peak do not count memory the
    allocator merely kept from earlier work (e.g. loading); the amount released is reported."""

    def __enter__(self):
        import gc

        gc.collect()
        self.trimmed = trim_heap() if TRIM else 0
        self.start_rss = rss_bytes()
        self.reset = reset_peak_rss()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.peak = peak_rss_bytes()
        self.end_rss = rss_bytes()
        return False

    def as_dict(self) -> dict:
        return {"peak_rss": self.peak, "start_rss": self.start_rss, "end_rss": self.end_rss,
                "peak_reset": self.reset, "trimmed": self.trimmed}


class PhasePeaks:
    """Peak RSS per phase of a run: start(name) closes the previous phase (records its peak) and resets the peak."""

    def __init__(self):
        self.peaks: dict[str, int] = {}
        self.current: str | None = None

    def start(self, name: str | None) -> None:
        if self.current is not None:
            self.peaks[self.current] = max(self.peaks.get(self.current, 0), peak_rss_bytes())
        reset_peak_rss()
        self.current = name

    def stop(self) -> dict[str, int]:
        self.start(None)
        return dict(self.peaks)


# ---------------------------------------------------------------------------------------------- timing

class StepClock:
    """Wall-clock time stamps of step callbacks: (phase, step, t)."""

    def __init__(self):
        self.stamps: list[tuple[str, int, float]] = []
        self.phase = "idle"

    def tick(self, step: int) -> None:
        self.stamps.append((self.phase, int(step), time.perf_counter()))

    def times(self, phase: str) -> list[float]:
        return [t for p, _, t in self.stamps if p == phase]

    def step_durations(self, phase: str, start: float) -> list[float]:
        """Durations of each step of a phase, the first measured from `start`."""
        ts = [start] + self.times(phase)
        return [b - a for a, b in zip(ts, ts[1:], strict=False)]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------------------- machine

def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def machine_info() -> dict:
    """CPU model, cores, memory, torch/diffusers versions, load average now."""
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        cpu = m.group(1).strip() if m else cpu
        flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flags and f in flags.group(1).split()]
    except OSError:
        isa = []
    mem_total = None
    try:
        import psutil

        mem_total = psutil.virtual_memory().total
    except ImportError:
        pass
    import torch

    info = {"cpu": cpu, "isa": isa, "logical_cpus": os.cpu_count(), "memory_total": mem_total,
            "python": sys.version.split()[0], "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "loadavg_start": load_average()}
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    return info


def dtype_bytes(*modules) -> dict:
    """Bytes of parameters and buffers per dtype over some torch modules."""
    out: dict[str, int] = {}
    for m in modules:
        for t in m.state_dict().values():
            out[str(t.dtype)] = out.get(str(t.dtype), 0) + t.numel() * t.element_size()
    return out


def available_memory() -> int | None:
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:
        return None


# ---------------------------------------------------------------------------------------------- protocol

def reply(obj) -> None:
    """Send one JSON reply from a worker to the orchestrator (one line on stdout)."""
    sys.stdout.write(REPLY_PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(handlers: dict) -> None:
    """Worker loop: read one JSON command per stdin line, run handlers[cmd["op"]](**args), reply."""
    import traceback

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "quit":
            reply({"ok": True})
            return
        try:
            result = handlers[op](**cmd)
            reply({"ok": True, "result": result})
        except Exception as e:  # the orchestrator reports it and carries on with other measurements
            reply({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})


def load_image(size: int, batch: int = 1):
    """The bundled sample photo resized to size x size: (PIL image, host IMAGE tensor (B, H, W, 3))."""
    import numpy as np
    import torch
    from PIL import Image

    img = Image.open(SAMPLE_IMAGE).convert("RGB").resize((size, size), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(img).astype("float32") / 255.0)[None]
    return img, arr.repeat(batch, 1, 1, 1)
