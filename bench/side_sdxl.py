"""Both sides of the SDXL benchmark (bench/bench_sdxl.py), each run in its own worker process.

* ``prepare`` (its own process): builds the host's random-weight SDXL with
  ``scripts/random_models.build_random_model("sdxl", size, seed)``, computes reference outputs on fixed inputs
  (one UNet call with SDXL's added conditioning, one prompt through each text encoder, one VAE encode), then
  writes the same weights in diffusers' / transformers' layout (UNet: the host's own key map
  ``comfy.utils.unet_to_diffusers``; VAE: diffusers' ``convert_ldm_vae_checkpoint``; CLIP-L and OpenCLIP bigG:
  the host already keeps them in transformers' layout, bigG with its ``text_projection``) plus the diffusers
  configs derived from the host's, in sharded safetensors files so that no whole-model copy is made.
* ``OursXL``: side_ours.Host with the SDXL model (the same node functions, timing and memory probes);
  only the bare UNet call differs (SDXL's 2048-wide context and its ``y`` vector).
* ``ReferenceXL``: diffusers' ``LEditsPPPipelineStableDiffusionXL`` with those weights (this process imports
  neither the host nor the pack), run as a user would: ``pipe.invert(image=...)`` then
  ``pipe(editing_prompt=[...], output_type="latent")``. Its run() is side_diffusers.Reference.run.

fp32 on both sides: one side is about 14 GB resident, so the orchestrator never keeps both alive at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import bench_common as bc
import side_diffusers
import side_ours
from side_ours import hostenv

SHARD_BYTES = 2 * bc.GIB
CHECK_PROMPT = "a photo of a cat with sunglasses"
CHECK_LATENT = 64  # latent side of the UNet check (512 px)
# SDXL's noise schedule (its scheduler_config.json: scaled_linear 0.00085..0.012, leading spacing,
# steps_offset 1) with the scheduler LEDITS++ uses.
SCHEDULER = dict(side_diffusers.SCHEDULER, timestep_spacing="leading")
SDXL_VAE_CONFIG = dict(bc.VAE_CONFIG, scaling_factor=0.13025, sample_size=1024)


# ---------------------------------------------------------------------------------------------- configs

def diffusers_unet_config(uc: dict) -> dict:
    """diffusers UNet2DConditionModel kwargs equivalent to a host SDXL-style unet_config."""
    mc, mult = uc["model_channels"], list(uc["channel_mult"])
    nres = uc["num_res_blocks"]
    nres = list(nres) if isinstance(nres, (list, tuple)) else [nres] * len(mult)
    if len(set(nres)) != 1:
        raise ValueError(f"diffusers needs the same number of res blocks per level, got {nres}")
    td = list(uc["transformer_depth"])
    per_level = []
    for i in range(len(mult)):
        depths = set(td[i * nres[i]:(i + 1) * nres[i]])
        if len(depths) != 1:
            raise ValueError(f"level {i}: mixed transformer depths {depths}")
        per_level.append(depths.pop())
    mid = uc.get("transformer_depth_middle")
    if mid is not None and mid != per_level[-1]:
        raise ValueError(f"diffusers' mid block takes the last level's depth ({per_level[-1]}), host has {mid}")
    nhc = uc.get("num_head_channels", -1)
    heads = [mc * m // nhc for m in mult] if nhc and nhc > 0 else [uc["num_heads"]] * len(mult)
    down = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in per_level]
    up = ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(per_level)]
    return {
        "sample_size": 128, "in_channels": uc["in_channels"], "out_channels": uc["out_channels"],
        "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": down, "up_block_types": up, "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": [mc * m for m in mult], "layers_per_block": nres[0], "downsample_padding": 1,
        "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
        "cross_attention_dim": uc["context_dim"], "transformer_layers_per_block": [max(1, d) for d in per_level],
        "attention_head_dim": heads, "use_linear_projection": bool(uc["use_linear_in_transformer"]),
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": uc["adm_in_channels"], "upcast_attention": False,
    }


def text_encoder_config(host_json: str, sd: dict, pad_token_id: int) -> dict:
    """transformers CLIPTextConfig kwargs from the host's config file, checked against the weights' shapes."""
    cfg = json.loads((hostenv.host_path() / "comfy" / host_json).read_text())
    hidden = sd["text_model.embeddings.token_embedding.weight"].shape[1]
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers."))
    if hidden != cfg["hidden_size"] or layers != cfg["num_hidden_layers"]:
        raise ValueError(f"{host_json}: weights are {hidden} wide, {layers} layers; config says otherwise")
    out = {k: cfg[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps")}
    out.update(projection_dim=cfg.get("projection_dim", hidden), bos_token_id=49406, eos_token_id=49407,
               pad_token_id=pad_token_id)
    return out


# ---------------------------------------------------------------------------------------------- prepare

def save_sharded(sd: dict, cache: Path, name: str) -> list[str]:
    """safetensors shards of at most SHARD_BYTES (save_file serialises a whole dict in memory at once)."""
    from safetensors.torch import save_file

    shards, cur, size = [], {}, 0
    for k in sorted(sd):
        t = sd[k]
        nbytes = t.numel() * t.element_size()
        if cur and size + nbytes > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = t
        size += nbytes
    if cur:
        shards.append(cur)
    names = []
    for i, shard in enumerate(shards):
        fname = f"{name}-{i:03d}.safetensors"
        save_file({k: v.contiguous() for k, v in shard.items()}, str(cache / fname))
        names.append(fname)
    return names


def load_sharded(cache: Path, names: list[str]) -> dict:
    out = {}
    for n in names:
        out.update(side_diffusers._load(cache / n))
    return out


def prepare(cache_dir: str, seed: int, model_size: str = "full", threads: int | None = None) -> dict:
    """Build the host's random SDXL, write reference outputs, then the weights in diffusers' layout."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    hostenv.import_host()
    import comfy.utils
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    rm = hostenv.import_random_models()
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("*.safetensors"):
        old.unlink()
    t0 = time.perf_counter()
    model, clip, vae = rm.build_random_model("sdxl", model_size, seed)
    build_s = time.perf_counter() - t0
    unet = model.model.diffusion_model
    host_uc = dict(model.model.model_config.unet_config)
    out = {"build_s": build_s, "model_size": model_size,
           "unet_params": sum(p.numel() for p in unet.parameters()),
           "host_clip_dtypes": bc.dtype_bytes(clip.cond_stage_model), "host_vae_dtype": str(vae.vae_dtype)}

    # Reference outputs on fixed inputs (before anything is freed).
    gen = torch.Generator().manual_seed(1234)
    h = CHECK_LATENT
    x = torch.randn((1, 4, h, h), generator=gen)
    with torch.inference_mode():
        tokens = clip.tokenize(CHECK_PROMPT)
        ctx, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        ctx, pooled = ctx.float(), pooled.float()
        px = 8 * h
        y = model.model.encode_adm(pooled_output=pooled, width=px, height=px, crop_w=0, crop_h=0,
                                   target_width=px, target_height=px).float()
        t0 = time.perf_counter()
        eps = unet(x, timesteps=torch.tensor([500.0]), context=ctx, y=y).float()
        out["host_unet_call_s"] = time.perf_counter() - t0
        img = torch.rand((1, 64, 64, 3), generator=gen)
        lat = vae.encode(img).float()
    torch.save({"x": x, "t": 500, "context": ctx, "pooled": pooled, "y": y, "eps": eps, "prompt": CHECK_PROMPT,
                "size_px": px, "image": img, "latent": lat, "seed": seed,
                "tokens_l": [t for t, _ in tokens["l"][0]], "tokens_g": [t for t, _ in tokens["g"][0]]},
               cache / "reference.pt")

    # UNet: the host's ldm -> diffusers key map, restricted to the keys diffusers' SDXL UNet has
    # (the map lists label_emb under both class_embedding and add_embedding).
    d_cfg = diffusers_unet_config(host_uc)
    with torch.device("meta"):
        d_keys = set(UNet2DConditionModel(**d_cfg).state_dict())
    ldm = unet.state_dict()
    mapping = comfy.utils.unet_to_diffusers(host_uc)
    unet_sd = {d: ldm[k] for d, k in mapping.items() if k in ldm and d in d_keys}
    unused = sorted(set(ldm) - set(mapping[d] for d in unet_sd))
    missing = sorted(d_keys - set(unet_sd))
    if unused or missing:
        raise RuntimeError(f"UNet conversion: host keys not converted {unused[:5]}, diffusers keys missing {missing[:5]}")
    files = {"unet": save_sharded(unet_sd, cache, "unet")}
    out["unet_keys"] = len(unet_sd)
    del unet_sd, ldm, unet, model
    # Text encoders: transformers' layout under "clip_l.transformer." / "clip_g.transformer.".
    csd = clip.cond_stage_model.state_dict()
    configs = {"unet": d_cfg, "vae": SDXL_VAE_CONFIG}
    for name, prefix, host_json, pad in (("text_encoder", "clip_l.transformer.", "sd1_clip_config.json", 49407),
                                         ("text_encoder_2", "clip_g.transformer.", "clip_config_bigg.json", 0)):
        sd = {k[len(prefix):]: v.float() for k, v in csd.items()
              if k.startswith(prefix + "text_model.")
              or (name == "text_encoder_2" and k == prefix + "text_projection.weight")}
        configs[name] = text_encoder_config(host_json, sd, pad)
        files[name] = save_sharded(sd, cache, name)
        out[f"{name}_keys"] = len(sd)
        del sd
    del csd, clip
    vae_sd = convert_ldm_vae_checkpoint(vae.first_stage_model.state_dict(), SDXL_VAE_CONFIG)
    files["vae"] = save_sharded({k: v.float() for k, v in vae_sd.items()}, cache, "vae")
    out["vae_keys"] = len(vae_sd)
    (cache / "config.json").write_text(json.dumps({"configs": configs, "files": files}, indent=1))
    (cache / "READY").write_text(f"sdxl {model_size} seed {seed}\n")
    out["cache_dir"] = str(cache)
    out["bytes_written"] = sum(f.stat().st_size for f in cache.glob("*.safetensors"))
    return out


# ---------------------------------------------------------------------------------------------- ours

class OursXL(side_ours.Host):
    """side_ours.Host with the host's random SDXL."""

    def __init__(self, seed: int, threads: int | None, device: str = "cpu", model_size: str = "full"):
        super().__init__(seed, threads, device, family="sdxl", model_size=model_size)
        self.model_size = model_size

    def info(self) -> dict:
        return dict(super().info(), model_size=self.model_size,
                    unet_params=sum(p.numel() for p in self.unet.parameters()))

    def bare_call(self, batch: int, size: int, repeats: int = 1, attention: str | None = None) -> list[float]:
        """One plain host UNet call (BaseModel.apply_model) per repeat: batch x (4, size/8, size/8), 77-token
        2048-wide contexts and SDXL's 2816-wide y (pooled text + size embeddings)."""
        torch = self.torch
        h = size // 8
        gen = torch.Generator().manual_seed(7)
        dev = self.mm.get_torch_device()
        uc = self.model.model.model_config.unet_config
        x = torch.randn((batch, 4, h, h), generator=gen).to(dev)
        ctx = torch.randn((batch, 77, uc["context_dim"]), generator=gen).to(dev)
        y = torch.randn((batch, uc["adm_in_channels"]), generator=gen).to(dev)
        sigma = torch.full((batch,), 3.0, device=dev)
        self.mm.load_models_gpu([self.model])
        previous = self.attention.optimized_attention
        if attention is not None:
            self.attention.optimized_attention = {"sub_quad": self.attention.attention_sub_quad,
                                                  "split": self.attention.attention_split,
                                                  "pytorch": self.attention.attention_pytorch}[attention]
        times = []
        self.clock.phase = "bare"
        try:
            with torch.inference_mode():
                for _ in range(repeats):
                    self.sync()
                    t0 = time.perf_counter()
                    self.model.model.apply_model(x, sigma, c_crossattn=ctx, y=y)
                    self.sync()
                    times.append(time.perf_counter() - t0)
        finally:
            self.attention.optimized_attention = previous
            self.clock.phase = "idle"
        return times


def ours_worker(seed: int, threads: int | None, device: str, model_size: str) -> None:
    host = OursXL(seed, threads, device, model_size)
    bc.reply({"ok": True, "result": host.info()})
    bc.serve({"run": host.run, "bare": host.bare_call, "info": host.info, "warmup": host.warmup})


# ---------------------------------------------------------------------------------------------- diffusers

class ReferenceXL(side_diffusers.Reference):
    """diffusers' LEditsPPPipelineStableDiffusionXL with the weights prepare() wrote."""

    def __init__(self, cache_dir: str, threads: int | None, device: str = "cpu"):  # noqa: D107 (not super's)
        import torch

        if threads:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        from diffusers import (
            AutoencoderKL,
            DPMSolverMultistepScheduler,
            LEditsPPPipelineStableDiffusionXL,
            UNet2DConditionModel,
        )
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        self.torch = torch
        self.device = device
        self.import_s = time.perf_counter() - t0
        cache = Path(cache_dir)
        meta = json.loads((cache / "config.json").read_text())
        cfgs, files = meta["configs"], meta["files"]
        t0 = time.perf_counter()
        with torch.device("meta"):  # no second copy of the weights: the loaded tensors are assigned
            unet = UNet2DConditionModel(**cfgs["unet"])
        unet.load_state_dict(load_sharded(cache, files["unet"]), strict=True, assign=True)
        left = [n for n, t in list(unet.named_parameters()) + list(unet.named_buffers()) if t.is_meta]
        if left:
            raise RuntimeError(f"UNet tensors not loaded: {left[:5]}")
        encoders = []
        for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            te = cls(CLIPTextConfig(**cfgs[name]))
            sd = load_sharded(cache, files[name])
            if cls is CLIPTextModel:  # caches written before prepare() dropped CLIP-L's unused projection
                sd.pop("text_projection.weight", None)
            if not any(k.startswith("text_model.") for k in te.state_dict()):  # transformers 5 layout
                sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
            missing, unexpected = te.load_state_dict(sd, strict=False)
            missing = [m for m in missing if "position_ids" not in m]
            if unexpected or missing:
                raise RuntimeError(f"{name}: {len(missing)} missing keys ({missing[:3]}), "
                                   f"{len(unexpected)} unexpected ({unexpected[:3]})")
            del sd
            encoders.append(te)
        vae = AutoencoderKL(**cfgs["vae"])
        vae.load_state_dict(load_sharded(cache, files["vae"]), strict=True)
        tok_dir = str(side_diffusers.host_tokenizer_dir())
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77, pad_token="<|endoftext|>")
        tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77, pad_token="!")
        for m in (unet, *encoders, vae):
            m.eval().requires_grad_(False)
        self.pipe = LEditsPPPipelineStableDiffusionXL(
            vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=unet, scheduler=DPMSolverMultistepScheduler(**SCHEDULER),
            image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt=True, add_watermarker=False)
        self.pipe.set_progress_bar_config(disable=True)
        if device != "cpu":
            self.pipe.to(device)
        self.load_s = time.perf_counter() - t0
        self.cache = cache
        self.events: list[tuple[str, str, int, float]] = []
        self.phase = "idle"
        self.peaks = bc.PhasePeaks()
        unet.register_forward_hook(self._unet_done, with_kwargs=True)
        self._wrap("encode_prompt")
        self._wrap("encode_image")
        self._wrap_decode()

    def info(self) -> dict:
        pipe = self.pipe
        return dict(super().info(), text_encoder_2_dtypes=bc.dtype_bytes(pipe.text_encoder_2),
                    unet_params=sum(p.numel() for p in pipe.unet.parameters()),
                    weights_bytes=sum(t.numel() * t.element_size() for m in
                                      (pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.vae)
                                      for t in m.state_dict().values()))

    def check(self) -> dict:
        """The converted weights give the host's outputs: both encoders (penultimate hidden states, as SDXL
        uses them, and bigG's projected pooled output), one VAE encode, one UNet call with added cond."""
        from diffusers.models.attention_processor import AttnProcessor2_0

        torch = self.torch
        ref = torch.load(self.cache / "reference.pt")
        pipe, dev = self.pipe, self.device
        out = {}
        with torch.no_grad():
            ids1 = pipe.tokenizer(ref["prompt"], padding="max_length", max_length=77, truncation=True,
                                  return_tensors="pt").input_ids
            ids2 = pipe.tokenizer_2(ref["prompt"], padding="max_length", max_length=77, truncation=True,
                                    return_tensors="pt").input_ids
            out["tokens_l_equal"] = ids1[0].tolist() == [int(t) for t in ref["tokens_l"]]
            out["tokens_g_equal"] = ids2[0].tolist() == [int(t) for t in ref["tokens_g"]]
            o1 = pipe.text_encoder(ids1.to(dev), output_hidden_states=True)
            o2 = pipe.text_encoder_2(ids2.to(dev), output_hidden_states=True)
            h1, h2 = o1.hidden_states[-2].float().cpu(), o2.hidden_states[-2].float().cpu()
            w1 = h1.shape[-1]
            out["text_l_max_abs_diff"] = float((h1 - ref["context"][..., :w1]).abs().max())
            out["text_g_max_abs_diff"] = float((h2 - ref["context"][..., w1:]).abs().max())
            out["pooled_g_max_abs_diff"] = float((o2[0].float().cpu() - ref["pooled"]).abs().max())
            out["text_ref_max_abs"] = float(ref["context"].abs().max())
            img = ref["image"].permute(0, 3, 1, 2).to(dev) * 2 - 1
            lat = pipe.vae.encode(img).latent_dist.mode().float().cpu()
            out["vae_max_abs_diff"] = float((lat - ref["latent"]).abs().max())
            px = ref["size_px"]
            added = {"text_embeds": ref["pooled"].to(dev),
                     "time_ids": torch.tensor([[px, px, 0, 0, px, px]], dtype=torch.float32, device=dev)}
            pipe.unet.set_attn_processor(AttnProcessor2_0())
            self.phase = "check"
            t0 = time.perf_counter()
            eps = pipe.unet(ref["x"].to(dev), ref["t"], encoder_hidden_states=ref["context"].to(dev),
                            added_cond_kwargs=added).sample
            self.sync()
            out["bare_b1_sdpa_s"] = time.perf_counter() - t0
            out["unet_max_abs_diff"] = float((eps.float().cpu() - ref["eps"]).abs().max())
            out["unet_ref_max_abs"] = float(ref["eps"].abs().max())
            out["unet_check_latent"] = list(ref["x"].shape)
        self.phase = "idle"
        return out

    def bare(self, batch: int, size: int, processor: str = "sdpa", repeats: int = 1) -> list[float]:
        """Plain diffusers UNet calls with SDPA (its default) or the classic AttnProcessor, SDXL added cond."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        torch = self.torch
        gen = torch.Generator().manual_seed(7)
        h = size // 8
        cfg = self.pipe.unet.config
        x = torch.randn((batch, 4, h, h), generator=gen).to(self.device)
        ctx = torch.randn((batch, 77, cfg.cross_attention_dim), generator=gen).to(self.device)
        pooled_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        added = {"text_embeds": torch.randn((batch, pooled_dim), generator=gen).to(self.device),
                 "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch, dtype=torch.float32,
                                          device=self.device)}
        self.pipe.unet.set_attn_processor(AttnProcessor2_0() if processor == "sdpa" else AttnProcessor())
        times = []
        with torch.no_grad():
            for _ in range(repeats):
                t0 = time.perf_counter()
                self.pipe.unet(x, 500, encoder_hidden_states=ctx, added_cond_kwargs=added)
                self.sync()
                times.append(time.perf_counter() - t0)
        return times


def diffusers_worker(cache_dir: str, threads: int | None, device: str) -> None:
    ref = ReferenceXL(cache_dir, threads, device)
    bc.reply({"ok": True, "result": ref.info()})
    bc.serve({"run": ref.run, "check": ref.check, "bare": ref.bare, "info": ref.info})
