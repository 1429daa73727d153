"""The reference side of the benchmark: diffusers' LEditsPPPipelineStableDiffusion with our host model's weights.

Runs as a worker process (see bench_ledits.py). The weights come from the files side_ours.prepare() wrote
(the host's random-weight SD1.5, converted to diffusers' layout with the host's UNet key map and diffusers'
own VAE converter); this process imports neither the host nor the pack. The pipeline is run as a user would:
``pipe.invert(image=...)`` then ``pipe(editing_prompt=[...], output_type="latent")``.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import bench_common as bc

sys.path.insert(0, str(bc.REPO_ROOT / "scripts"))
import hostenv  # noqa: E402  (only its host lookup: this process imports neither the host nor the pack)

UNET_CONFIG = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 768, "attention_head_dim": 8,
}
# SD1.5's noise schedule (its scheduler_config.json) with the scheduler LEDITS++ uses.
SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "steps_offset": 1, "algorithm_type": "sde-dpmsolver++", "solver_order": 2}


def host_tokenizer_dir() -> Path:
    """The host's CLIP-L tokenizer files (the host is found as ``scripts/hostenv.py`` finds it; not imported)."""
    return hostenv.host_path() / "comfy" / "sd1_tokenizer"


def _load(path: Path) -> dict:
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k).clone()  # own memory, not pages of the file mapping
    return out


class Reference:
    def __init__(self, cache_dir: str, threads: int | None, device: str = "cpu"):
        import torch

        if threads:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        from diffusers import (
            AutoencoderKL,
            DPMSolverMultistepScheduler,
            LEditsPPPipelineStableDiffusion,
            UNet2DConditionModel,
        )
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        self.torch = torch
        self.device = device
        self.import_s = time.perf_counter() - t0
        cache = Path(cache_dir)
        t0 = time.perf_counter()
        with torch.device("meta"):  # no second copy of 3.4 GB: the loaded tensors are assigned
            unet = UNet2DConditionModel(**UNET_CONFIG)
        unet.load_state_dict(_load(cache / "unet.safetensors"), strict=True, assign=True)
        left = [n for n, t in list(unet.named_parameters()) + list(unet.named_buffers()) if t.is_meta]
        if left:
            raise RuntimeError(f"UNet tensors not loaded: {left[:5]}")
        te_cfg = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                      projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
        text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
        te_sd = _load(cache / "text_encoder.safetensors")
        if not any(k.startswith("text_model.") for k in text_encoder.state_dict()):  # transformers 5 layout
            te_sd = {k.removeprefix("text_model."): v for k, v in te_sd.items()}
        missing, unexpected = text_encoder.load_state_dict(te_sd, strict=False)
        missing = [m for m in missing if "position_ids" not in m]
        if unexpected or missing:
            raise RuntimeError(f"text encoder: {len(missing)} missing keys ({missing[:3]}), "
                               f"{len(unexpected)} unexpected ({unexpected[:3]})")
        vae = AutoencoderKL(**bc.VAE_CONFIG)
        vae.load_state_dict(_load(cache / "vae.safetensors"), strict=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(host_tokenizer_dir()), model_max_length=77,
                                                  pad_token="<|endoftext|>")
        for m in (unet, text_encoder, vae):
            m.eval().requires_grad_(False)
        self.pipe = LEditsPPPipelineStableDiffusion(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=DPMSolverMultistepScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)
        if device != "cpu":
            self.pipe.to(device)
        self.load_s = time.perf_counter() - t0
        self.cache = cache
        self.events: list[tuple[str, str, int, float]] = []  # (phase, kind, rows, time)
        self.phase = "idle"
        self.peaks = bc.PhasePeaks()
        unet.register_forward_hook(self._unet_done, with_kwargs=True)
        self._wrap("encode_prompt")
        self._wrap("encode_image")
        self._wrap_decode()

    def _unet_done(self, module, args, kwargs, output):
        x = args[0] if args else kwargs["sample"]
        self.sync()
        self.events.append((self.phase, "unet", int(x.shape[0]), time.perf_counter()))

    def _wrap(self, name: str) -> None:
        """Time one pipeline method (an instance attribute shadowing the class's; nothing else changes).
        The VAE encode inside invert() is also its own memory phase."""
        original = getattr(self.pipe, name)

        @functools.wraps(original)
        def timed(*a, **k):
            phases = self.peaks if name == "encode_image" and self.peaks.current == "invert" else None
            if phases is not None:
                phases.start("encode")
            t0 = time.perf_counter()
            out = original(*a, **k)
            self.sync()
            self.events.append((self.phase, name, 0, time.perf_counter() - t0))
            if phases is not None:
                phases.start("invert")
            return out
        setattr(self.pipe, name, timed)

    def _wrap_decode(self) -> None:
        """invert() always decodes its VAE reconstruction (an output of invert, not needed to edit): time it
        and give it its own memory phase, so that the report can also compare without it."""
        vae = self.pipe.vae
        original = vae.decode

        @functools.wraps(original)
        def timed(*a, **k):
            inverting = self.peaks.current == "invert"
            if inverting:
                self.peaks.start("decode")
            t0 = time.perf_counter()
            out = original(*a, **k)
            self.sync()
            self.events.append((self.phase, "vae_decode", 0, time.perf_counter() - t0))
            if inverting:
                self.peaks.start("invert")
            return out
        vae.decode = timed

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def info(self) -> dict:
        import diffusers
        import transformers

        unet = self.pipe.unet
        return {"import_s": self.import_s, "load_s": self.load_s, "rss_after_load": bc.rss_bytes(),
                "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                "torch_threads": self.torch.get_num_threads(), "unet_dtype": str(next(unet.parameters()).dtype),
                "text_encoder_dtypes": bc.dtype_bytes(self.pipe.text_encoder),
                "weights_bytes": sum(t.numel() * t.element_size() for m in
                                     (unet, self.pipe.text_encoder, self.pipe.vae) for t in m.state_dict().values())}

    # ------------------------------------------------------------------------------------------ check
    def check(self) -> dict:
        """The converted weights give the host's outputs: one UNet call, one prompt, one VAE encode."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        torch = self.torch
        ref = torch.load(self.cache / "reference.pt")
        pipe, dev = self.pipe, self.device
        out = {}
        with torch.no_grad():
            ids = pipe.tokenizer(ref["prompt"], padding="max_length", max_length=77, return_tensors="pt").input_ids
            emb = pipe.text_encoder(ids.to(dev))[0].float().cpu()
            out["text_max_abs_diff"] = float((emb - ref["context"]).abs().max())
            img = ref["image"].permute(0, 3, 1, 2).to(dev) * 2 - 1
            lat = pipe.vae.encode(img).latent_dist.mode().float().cpu()
            out["vae_max_abs_diff"] = float((lat - ref["latent"]).abs().max())
            for name, proc in (("sdpa", AttnProcessor2_0()), ("classic", AttnProcessor())):
                pipe.unet.set_attn_processor(proc)
                self.phase = "check"
                t0 = time.perf_counter()
                eps = pipe.unet(ref["x"].to(dev), ref["t"], encoder_hidden_states=ref["context"].to(dev)).sample
                self.sync()
                out[f"bare_b1_{name}_s"] = time.perf_counter() - t0
                eps = eps.float().cpu()
                out[f"unet_max_abs_diff_{name}"] = float((eps - ref["eps"]).abs().max())
                out["unet_ref_max_abs"] = float(ref["eps"].abs().max())
                if name == "sdpa" and os.environ.get("LEDITS_BENCH_CHECK_CLASSIC") != "1":
                    break
        self.phase = "idle"
        return out

    def bare(self, batch: int, size: int, processor: str = "sdpa", repeats: int = 1) -> list[float]:
        """Plain diffusers UNet calls with SDPA (its default) or classic attention (what LEDITS++ installs)."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        torch = self.torch
        gen = torch.Generator().manual_seed(7)
        h = size // 8
        x = torch.randn((batch, 4, h, h), generator=gen).to(self.device)
        ctx = torch.randn((batch, 77, 768), generator=gen).to(self.device)
        self.pipe.unet.set_attn_processor(AttnProcessor2_0() if processor == "sdpa" else AttnProcessor())
        times = []
        with torch.no_grad():
            for _ in range(repeats):
                t0 = time.perf_counter()
                self.pipe.unet(x, 500, encoder_hidden_states=ctx)
                self.sync()
                times.append(time.perf_counter() - t0)
        return times

    # ------------------------------------------------------------------------------------------ run
    def run(self, steps: int, n_concepts: int, batch: int = 1, size: int = 512, seed: int = 0,
            warmups: list[float] | None = None, bare_repeats: int = 0, **_) -> dict:
        torch = self.torch
        if batch != 1:
            raise ValueError("the diffusers side runs batch 1 only (its M1 store mixes images for B >= 2)")
        specs = bc.concepts(n_concepts, warmups)
        image, _ = bc.load_image(size, 1)
        pipe = self.pipe
        self.events.clear()
        out = {"steps": steps, "concepts": n_concepts, "batch": batch, "size": size,
               "loadavg_before": bc.load_average()}
        self.phase = "invert"
        self.peaks = bc.PhasePeaks()
        with bc.PeakMeter() as inv_pm:
            self.peaks.start("invert")
            pipe.invert(image=image, source_prompt="", num_inversion_steps=steps, skip=bc.SKIP,
                        generator=torch.Generator().manual_seed(seed))
            self.sync()
            phases = self.peaks.stop()
        out["invert_s"] = inv_pm.seconds
        out["invert_mem"] = dict(inv_pm.as_dict(), peak_rss=max(phases.values()), phases=phases)
        out["encode_s"] = sum(t for p, k, _, t in self.events if p == "invert" and k == "encode_image")
        out["decode_s"] = sum(t for p, k, _, t in self.events if p == "invert" and k == "vae_decode")
        unet_ends = [t for p, k, _, t in self.events if p == "invert" and k == "unet"]
        first = inv_pm.t0 + out["encode_s"] + out["decode_s"]
        out["invert_step_s"] = [b - a for a, b in zip([first] + unet_ends, unet_ends, strict=False)]
        stamps: list[float] = []

        def on_step_end(pipeline, i, t, callback_kwargs):
            self.sync()
            stamps.append(time.perf_counter())
            return callback_kwargs

        self.phase = "edit"
        with bc.PeakMeter() as edit_pm:
            pipe(editing_prompt=[c["text"] for c in specs],
                 reverse_editing_direction=[c["reverse"] for c in specs],
                 edit_guidance_scale=[c["scale"] for c in specs],
                 edit_threshold=[c["threshold"] for c in specs],
                 edit_warmup_steps=[int(round(c["warmup"] * steps)) for c in specs],
                 use_intersect_mask=True, output_type="latent", callback_on_step_end=on_step_end)
            self.sync()
        self.phase = "idle"
        prompt_s = sum(t for p, k, _, t in self.events if p == "edit" and k == "encode_prompt")
        out["concept_encode_s"] = prompt_s
        out["edit_s"] = edit_pm.seconds
        out["sample_s"] = edit_pm.seconds - prompt_s
        out["edit_mem"] = edit_pm.as_dict()
        start = edit_pm.t0 + prompt_s
        out["edit_step_s"] = [b - a for a, b in zip([start] + stamps, stamps, strict=False)]
        out["rows_per_step"] = [n for p, k, n, _ in self.events if p == "edit" and k == "unet"]
        out["invert_rows_per_step"] = [n for p, k, n, _ in self.events if p == "invert" and k == "unet"]
        out["record_bytes"] = sum(t.numel() * t.element_size() for t in (pipe.zs, pipe.init_latents))
        out["loadavg_after"] = bc.load_average()
        if bare_repeats:
            out["bare_s"] = self.bare(1 + n_concepts, size, "sdpa", bare_repeats)
        return out


def worker(cache_dir: str, threads: int | None, device: str) -> None:
    ref = Reference(cache_dir, threads, device)
    bc.reply({"ok": True, "result": ref.info()})
    bc.serve({"run": ref.run, "check": ref.check, "bare": ref.bare, "info": ref.info})
