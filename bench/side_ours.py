"""Our side of the benchmark: the pack's nodes on the real ComfyUI host, in-process (scripts/hostenv.py).

Runs as a worker process (see bench_ledits.py): builds the random-weight SD1.5 model once with
scripts/random_models.build_random_model("sd15", "full", seed) and then answers commands. The nodes are
called the way the host's executor calls them (their V3 ``execute`` classmethods, under
``torch.inference_mode()``), so the timings include everything the nodes do, but not the executor's
graph bookkeeping. ``prepare`` (a separate process) writes the same weights in diffusers' layout.
"""

from __future__ import annotations

import cProfile
import dataclasses
import os
import pstats
import sys
import time

import bench_common as bc

sys.path.insert(0, str(bc.REPO_ROOT / "scripts"))
import hostenv  # noqa: E402

FAMILY = "sd15"


class Host:
    """The host, the pack's node modules, and one random-weight model (SD1.5 at full size unless told;
    bench/side_sdxl.py subclasses it for SDXL)."""

    def __init__(self, seed: int, threads: int | None, device: str = "cpu", family: str = FAMILY,
                 model_size: str = "full"):
        t0 = time.perf_counter()
        host_nodes = hostenv.import_host()  # the host's nodes.py (our pack has a nodes/ folder too)
        hostenv.load_pack()
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = device
        import comfy.ldm.modules.attention as attention
        import comfy.model_management
        import latent_preview

        self.attention = attention
        self.mm = comfy.model_management
        self.host_nodes = host_nodes
        self.rm = hostenv.import_random_models()
        self.inv_mod = hostenv.import_pack_module("nodes.inversion_node")
        self.concept_mod = hostenv.import_pack_module("nodes.concept_node")
        self.sampler_mod = hostenv.import_pack_module("nodes.sampler_nodes")
        self.guider_mod = hostenv.import_pack_module("nodes.guider")
        self.capture_mod = hostenv.import_pack_module("nodes.capture")
        self.core = hostenv.import_pack_module("ledits_core")
        self.import_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.model, self.clip, self.vae = self.rm.build_random_model(family, model_size, seed)
        self.build_s = time.perf_counter() - t0
        self.clock = bc.StepClock()
        self.rows: list[tuple[str, int]] = []
        original = latent_preview.prepare_callback

        def timed_prepare_callback(model, steps, x0_output_dict=None):
            inner = original(model, steps, x0_output_dict)

            def callback(step, x0, x, total_steps):
                inner(step, x0, x, total_steps)
                self.clock.tick(step)
            return callback

        latent_preview.prepare_callback = timed_prepare_callback  # time stamps per step; the host's callback still runs
        self.unet = self.model.model.diffusion_model
        self.unet.register_forward_pre_hook(self._count_rows, with_kwargs=True)
        self.last_inversion = None

    def _count_rows(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        phase = self.clock.phase
        self.rows.append((phase, len(self.clock.times(phase)), int(x.shape[0])))  # (phase, step, rows)

    # ------------------------------------------------------------------------------------------ facts
    def info(self) -> dict:
        p = next(self.unet.parameters())
        return {"attention": self.attention.optimized_attention.__name__, "import_s": self.import_s,
                "build_s": self.build_s, "rss_after_build": bc.rss_bytes(), "unet_dtype": str(p.dtype),
                "clip_dtypes": bc.dtype_bytes(self.clip.cond_stage_model),
                "vae_dtype": str(self.vae.vae_dtype), "torch_threads": self.torch.get_num_threads(),
                "host_args": os.environ.get("COMFYUI_TEST_ARGS", hostenv.DEFAULT_HOST_ARGS),
                "weights_bytes": sum(t.numel() * t.element_size() for m in
                                     (self.unet, self.clip.cond_stage_model, self.vae.first_stage_model)
                                     for t in m.state_dict().values())}

    # ------------------------------------------------------------------------------------------ nodes
    def encode_invert(self, pixels, steps: int, seed: int, peaks: bc.PhasePeaks | None = None):
        """VAEEncode then LEDITS Inversion -> (inversion, seconds of the VAE encode)."""
        if peaks is not None:
            peaks.start("encode")
        t0 = time.perf_counter()
        latent = self.host_nodes.VAEEncode().encode(self.vae, pixels)[0]
        encode_s = time.perf_counter() - t0
        if peaks is not None:
            peaks.start("invert")
        inv = self.inv_mod.LeditsInversionNode.execute(self.model, self.clip, latent, steps, bc.SKIP, "dpmpp_2m_sde",
                                                       "karras", seed)
        if peaks is not None:
            peaks.stop()
        return inv.args[0], encode_s

    def make_concepts(self, specs: list[dict]):
        previous = None
        for c in specs:
            previous = self.concept_mod.LeditsConceptEdit.execute(
                self.clip, c["text"], c["scale"], c["threshold"], c["reverse"], c.get("warmup", 0.0), 1.0,
                previous=previous).args[0]
        return previous

    def edit(self, inversion, concepts, mask_mode="intersect"):
        return self.sampler_mod.LeditsSampler.execute(self.model, inversion, mask_mode, concepts=concepts).args

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    # ------------------------------------------------------------------------------------------ bare calls
    def bare_call(self, batch: int, size: int, repeats: int = 1, attention: str | None = None) -> list[float]:
        """One plain host UNet call (BaseModel.apply_model, what calc_cond_batch calls) per repeat, batch x
        (4, size/8, size/8) with 77-token contexts; `attention` temporarily swaps the host's attention function
        for the one a command-line flag would select ("sub_quad", "split", "pytorch")."""
        torch = self.torch
        h = size // 8
        gen = torch.Generator().manual_seed(7)
        dev = self.mm.get_torch_device()
        x = torch.randn((batch, 4, h, h), generator=gen).to(dev)
        ctx = torch.randn((batch, 77, 768), generator=gen).to(dev)
        sigma = torch.full((batch,), 3.0, device=dev)
        self.mm.load_models_gpu([self.model])
        previous = self.attention.optimized_attention
        if attention is not None:
            self.attention.optimized_attention = {"sub_quad": self.attention.attention_sub_quad,
                                                  "split": self.attention.attention_split,
                                                  "pytorch": self.attention.attention_pytorch,
                                                  "basic": self.attention.attention_basic}[attention]
        times = []
        self.clock.phase = "bare"
        try:
            with torch.inference_mode():
                for _ in range(repeats):
                    self.sync()
                    t0 = time.perf_counter()
                    self.model.model.apply_model(x, sigma, c_crossattn=ctx)
                    self.sync()
                    times.append(time.perf_counter() - t0)
        finally:
            self.attention.optimized_attention = previous
            self.clock.phase = "idle"
        return times

    def warmup(self, size: int = 64) -> dict:
        """First calls of a process pay one-off costs (kernel selection, allocator growth): pay them untimed."""
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            _, pixels = bc.load_image(size, 1)
            self.encode_invert(pixels, 1, 0)
        self.bare_call(1, size, 1)
        return {"seconds": time.perf_counter() - t0}

    def attention_flags(self, batch: int, size: int) -> dict:
        """Bare call time with the attention each host flag selects on CPU."""
        out = {}
        for name, flag in (("sub_quad", "(default on CPU)"), ("split", "--use-split-cross-attention"),
                           ("pytorch", "--use-pytorch-cross-attention")):
            with bc.PeakMeter() as pm:
                t = self.bare_call(batch, size, 1, name)
            out[name] = {"flag": flag, "seconds": t[0], **pm.as_dict()}
        return out

    # ------------------------------------------------------------------------------------------ runs
    def run(self, steps: int, n_concepts: int, batch: int = 1, size: int = 512, seed: int = 0,
            warmups: list[float] | None = None, bare_repeats: int = 0, invert: bool = True,
            keep: bool = True) -> dict:
        """VAE encode + inversion (timed together), concept encoding, edit; optional bare calls after."""
        torch = self.torch
        specs = bc.concepts(n_concepts, warmups)
        _, pixels = bc.load_image(size, batch)
        self.mm.load_models_gpu([self.model])
        self.clock.stamps.clear()
        self.rows.clear()
        out = {"steps": steps, "concepts": n_concepts, "batch": batch, "size": size, "warmups": warmups,
               "loadavg_before": bc.load_average()}
        with torch.inference_mode():
            if invert or self.last_inversion is None or self.last_inversion[0] != (steps, batch, size):
                self.clock.phase = "invert"
                peaks = bc.PhasePeaks()
                with bc.PeakMeter() as inv_pm:
                    inversion, out["encode_s"] = self.encode_invert(pixels, steps, seed, peaks)
                    self.sync()
                out["invert_s"] = inv_pm.seconds
                out["invert_mem"] = dict(inv_pm.as_dict(), peak_rss=max(peaks.peaks.values()), phases=peaks.peaks)
                out["invert_step_s"] = self.clock.step_durations("invert", inv_pm.t0 + out["encode_s"])
                self.last_inversion = ((steps, batch, size), inversion)
            inversion = self.last_inversion[1]
            record = inversion.record
            out["record_bytes"] = sum(t.numel() * t.element_size() for t in (record.noise_maps, record.x_start, record.sigmas))
            self.clock.phase = "edit"
            with bc.PeakMeter() as edit_pm:
                t0 = time.perf_counter()
                chained = self.make_concepts(specs)
                t1 = time.perf_counter()
                latent, masks = self.edit(inversion, chained)
                self.sync()
            out["concept_encode_s"] = t1 - t0
            out["edit_s"] = edit_pm.seconds
            out["sample_s"] = edit_pm.seconds - (t1 - t0)
            out["edit_mem"] = edit_pm.as_dict()
            out["edit_step_s"] = self.clock.step_durations("edit", t1)
            out["rows_per_step"] = _rows_per_step(self.rows, "edit", steps)
            out["invert_rows_per_step"] = _rows_per_step(self.rows, "invert", steps)
            out["mask_bytes"] = sum(t.numel() * t.element_size() for per in masks.per_step.values()
                                    for m in per.values() for t in (m.attention, m.noise, m.final) if t is not None)
            out["finite"] = bool(torch.isfinite(latent["samples"]).all())
            self.last_latent = latent["samples"]
        out["loadavg_after"] = bc.load_average()
        if bare_repeats:
            with bc.PeakMeter() as bare_pm:
                out["bare_s"] = self.bare_call(batch * (1 + n_concepts), size, bare_repeats)
            out["bare_mem"] = bare_pm.as_dict()
        if not keep:
            self.last_inversion = None
        return out

    def profile(self, steps: int, n_concepts: int, size: int = 512, seed: int = 0, top: int = 15) -> dict:
        """cProfile of an edit of `steps` steps, by component. Replays the first `steps` steps of the last
        side-by-side inversion when there is one of this size (the cost of a step does not depend on
        which step it is), else inverts first (not profiled)."""
        torch = self.torch
        with torch.inference_mode():
            if self.last_inversion is not None and self.last_inversion[0][2] == size:
                inversion = self.last_inversion[1]
                rec = inversion.record
                short = dataclasses.replace(rec, sigmas=rec.sigmas[:steps + 1], noise_maps=rec.noise_maps[:steps])
                inversion = dataclasses.replace(inversion, record=short)
            else:
                inversion, _ = self.encode_invert(bc.load_image(size, 1)[1], steps, seed)
            chained = self.make_concepts(bc.concepts(n_concepts))
            prof = cProfile.Profile()
            self.clock.phase = "profile"
            t0 = time.perf_counter()
            prof.enable()
            self.edit(inversion, chained)
            prof.disable()
            total = time.perf_counter() - t0
            self.clock.phase = "idle"
        stats = pstats.Stats(prof)
        return {"steps": steps, "concepts": n_concepts, "size": size, "total_s": total,
                "components": _components(stats, steps), "top_tottime": _top(stats, top)}

    def prototype(self, steps: int, n_concepts: int, size: int = 256, warmups: list[float] | None = None) -> dict:
        """The suggested 'reuse the inversion's unconditional predictions' change, monkeypatched here only:
        the same inversion + edit without, with, and again without it (the baseline is the mean of the two);
        timings, UNet rows and the latent difference."""
        base = self.run(steps, n_concepts, 1, size, 0, warmups=warmups, invert=True)
        base_latent = self.last_latent
        undo, stats = reuse_inversion_uncond(self)
        try:
            proto = self.run(steps, n_concepts, 1, size, 0, warmups=warmups, invert=True)
        finally:
            undo()
        proto_latent = self.last_latent
        base2 = self.run(steps, n_concepts, 1, size, 0, warmups=warmups, invert=True)
        return {"baseline": base, "baseline2": base2, "prototype": proto, "reused_steps": stats["reused"],
                "baseline_repeat_max_abs_diff": float((self.last_latent - base_latent).abs().max()),
                "max_abs_latent_diff": float((proto_latent - base_latent).abs().max()),
                "latent_max_abs": float(base_latent.abs().max())}


def _rows_per_step(rows, phase, steps) -> list[int]:
    """UNet batch rows per step of a phase (all UNet calls of a step summed)."""
    out = [0] * steps
    for p, step, n in rows:
        if p == phase and step < steps:
            out[step] += n
    return out


_COMPONENTS = {
    # label: (file suffix, function name) whose cumulative time is reported
    "predict_noise (whole guided step)": ("nodes/guider.py", "predict_noise"),
    "calc_cond_batch (host batching + model)": ("comfy/samplers.py", "calc_cond_batch"),
    "apply_model (host model wrapper)": ("comfy/model_base.py", "apply_model"),
    "UNetModel.forward (bare UNet)": ("openaimodel.py", "forward"),
    "attn2 capture patch (ledits_attn2)": ("nodes/capture.py", "ledits_attn2"),
    "capture record (probabilities for M1)": ("nodes/capture.py", "record"),
    "EditGuidance (masks, quantiles, guidance)": ("ledits_core/guidance.py", "__call__"),
    "quantile_mask (M1+M2 quantiles)": ("ledits_core/masks.py", "quantile_mask"),
    "stepper (dpmpp_2m_sde)": ("ledits_core/steppers.py", "dpmpp_2m_sde_step"),
    "host sampling setup (prepare_sampling)": ("comfy/sampler_helpers.py", "prepare_sampling"),
}


def _components(stats: pstats.Stats, steps: int) -> dict:
    out = {}
    for label, (suffix, name) in _COMPONENTS.items():
        best = None
        for (fname, _line, func), (_cc, nc, _tt, ct, _callers) in stats.stats.items():
            if func == name and fname.replace("\\", "/").endswith(suffix):
                if best is None or ct > best[1]:
                    best = (nc, ct)
        if best is not None:
            out[label] = {"calls": best[0], "cum_s": best[1], "per_step_s": best[1] / steps}
    return out


def _top(stats: pstats.Stats, n: int) -> list[dict]:
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    return [{"function": f"{os.path.basename(f)}:{line}({func})", "calls": nc, "tottime_s": tt, "cum_s": ct}
            for (f, line, func), (_cc, nc, tt, ct, _callers) in rows]


# ---------------------------------------------------------------------------------------------- prototypes

def reuse_inversion_uncond(host: Host):
    """Prototype (not applied in the measured runs): during the inversion, keep each step's input x and the
    unconditional prediction; during an edit, when a step's x and sigma are exactly the inversion's (always at
    step 0, and at every step before the first active concept), pass None for the uncond cond to the host's
    calc_cond_batch (it skips None conds, keeping the others' indices for the attention capture) and use the
    kept prediction. Patches comfy.samplers.calc_cond_batch in this process; returns (undo, stats)."""
    import comfy.samplers
    import torch

    original = comfy.samplers.calc_cond_batch
    cache: dict = {}
    stats = {"reused": []}

    def calc_cond_batch(model, conds, x_in, timestep, model_options):
        phase = host.clock.phase
        key = round(float(timestep.flatten()[0]), 5)
        if phase == "invert" and len(conds) == 1:
            out = original(model, conds, x_in, timestep, model_options)
            cache[key] = (x_in.detach().clone(), out[0].detach().clone())
            return out
        hit = cache.get(key)
        if phase == "edit" and hit is not None and hit[0].shape == x_in.shape and torch.equal(hit[0], x_in):
            out = original(model, [None] + list(conds[1:]), x_in, timestep, model_options)
            out[0] = hit[1].clone()
            stats["reused"].append(key)
            return out
        return original(model, conds, x_in, timestep, model_options)

    comfy.samplers.calc_cond_batch = calc_cond_batch

    def undo():
        comfy.samplers.calc_cond_batch = original
    return undo, stats


# ---------------------------------------------------------------------------------------------- prepare

def prepare(cache_dir: str, seed: int) -> dict:
    """Build the host model, write its weights in diffusers' layout and reference outputs for the check."""
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    hostenv.import_host()
    import comfy.utils
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    rm = hostenv.import_random_models()
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, clip, vae = rm.build_random_model(FAMILY, "full", seed)
    build_s = time.perf_counter() - t0
    unet = model.model.diffusion_model
    # UNet: the host's own ldm -> diffusers key map (what it uses to load diffusers-format UNets).
    ldm = unet.state_dict()
    mapping = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    unet_sd = {d: ldm[k].contiguous() for d, k in mapping.items() if k in ldm}
    unused = sorted(set(ldm) - set(mapping.values()))
    if unused:
        raise RuntimeError(f"UNet keys not converted: {unused[:5]} ...")
    save_file(unet_sd, str(cache / "unet.safetensors"))
    # Text encoder: the host's CLIP-L is transformers' layout under "clip_l.transformer.".
    te_sd = {k[len("clip_l.transformer."):]: v.float().contiguous() for k, v in clip.cond_stage_model.state_dict().items()
             if k.startswith("clip_l.transformer.text_model.")}
    save_file(te_sd, str(cache / "text_encoder.safetensors"))
    vae_sd = convert_ldm_vae_checkpoint(vae.first_stage_model.state_dict(), bc.VAE_CONFIG)
    save_file({k: v.float().contiguous() for k, v in vae_sd.items()}, str(cache / "vae.safetensors"))
    # Reference outputs on fixed inputs: one UNet call, one prompt encoding, one VAE encode.
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn((1, 4, 64, 64), generator=gen)
    prompt = "a photo of a cat with sunglasses"
    with torch.inference_mode():
        ctx = clip.encode_from_tokens(clip.tokenize(prompt)).float()
        t = torch.tensor([500.0])
        t0 = time.perf_counter()
        eps = unet(x, timesteps=t, context=ctx).float()
        unet_s = time.perf_counter() - t0
        img = torch.rand((1, 64, 64, 3), generator=gen)
        lat = vae.encode(img).float()
    torch.save({"x": x, "t": 500, "context": ctx, "eps": eps, "prompt": prompt, "image": img, "latent": lat,
                "seed": seed}, cache / "reference.pt")
    (cache / "READY").write_text(f"sd15 full seed {seed}\n")
    return {"build_s": build_s, "unet_keys": len(unet_sd), "text_encoder_keys": len(te_sd), "vae_keys": len(vae_sd),
            "host_unet_call_s": unet_s, "cache_dir": str(cache)}


def worker(seed: int, threads: int | None, device: str) -> None:
    host = Host(seed, threads, device)
    bc.reply({"ok": True, "result": host.info()})
    bc.serve({"run": host.run, "bare": host.bare_call, "attention_flags": host.attention_flags,
              "profile": host.profile, "info": host.info, "warmup": host.warmup,
              "prototype": host.prototype})
