"""Random-weight SD3.5-medium, Flux.1-dev, Flux.1-schnell and Chroma models built from the host's own classes.

Test and benchmark support for issue 17 (LEDITS++ on flow transformers), not part of the pack. The host
must be imported first (``scripts/hostenv.py``: ``hostenv.import_host()``); ``comfy.*`` is imported
inside the functions, so importing this module does nothing. Findings behind it: docs/notes/flow_hosts.md.

Families: ``"sd35m"`` (SD3.5 medium: MMDiT-X with RMS q/k norm and dual attention in its first blocks),
``"flux_dev"`` (guidance-distilled: ``guidance_in`` embedder, ``ModelSamplingFlux``) and ``"flux_schnell"``
(no guidance embedder, FLOW sampling with shift 1 and multiplier 1); ``"chroma"`` (Flux's blocks with real CFG:
no guidance or pooled input, modulations from an approximator; T5 only; built, not detected, at "tiny").

Sizes:

* ``"tiny"``: the real layout (block types, key names, text widths 4096 / pooled 2048 or 768) at a small
  width: SD3.5m depth 2 (hidden 128 = 64 x depth, 2 heads; block 0 has dual attention, block 1 is the
  pre-only last block), ``pos_embed`` for 32 x 32 patches; Flux hidden 256 (2 heads of 128, rope axes
  16/56/56 as in the real model), 2 double + 2 single blocks.
* ``"real"``: the real width with fewer blocks (benchmarks): SD3.5m 1536 wide, 24 heads, ``blocks`` joint
  blocks (default 2; its 384 x 384-patch ``pos_embed`` buffer alone is 226 M values); Flux 3072 wide, 24 heads, ``blocks`` = (double, single) (default (1, 2)).
* ``"full"``: the published layouts (SD3.5m: 24 joint blocks, dual attention in 0..12, pos_embed 384 x 384;
  Flux: 19 double + 38 single blocks). Meant for ``shape_state_dict`` (detection only, no memory).

What the hosts' detection (``comfy.model_detection.detect_unet_config``) can reproduce from a state dict:
SD3 reads the width from ``x_embedder.proj.weight`` (depth = width // 64) and builds ``depth`` joint
blocks, so only "tiny" and "full" SD3.5m state dicts are detectable ("real" has ``num_blocks`` < depth:
build it with ``build_model``). Flux counts its blocks; 0.33.0 reads the width from ``img_in.weight`` /
``txt_in.weight`` (heads = width // 128), 0.3.64 assumes width 3072, 24 heads, context 4096, so a "tiny"
Flux state dict is detected correctly on 0.33.0 only; "real" and "full" on both.
"""

from __future__ import annotations

import dataclasses
import math

import torch

FAMILIES = ("sd35m", "flux_dev", "flux_schnell", "chroma")
SIZES = ("tiny", "real", "full")

# The text inputs the published models take: context width, pooled width, tokens of a short prompt.
# SD3: CLIP-L (768) + CLIP-G (1280) hidden states side by side, zero-padded to 4096, 77 rows per chunk,
# then T5-XXL (min. 77 tokens) along the sequence; pooled = CLIP-L pooled + CLIP-G projected pooled.
# Flux: T5-XXL (min. 256 tokens); pooled = CLIP-L pooled (768).
TEXT_DIMS = {
    "sd35m": {"context": 4096, "pooled": 2048, "tokens": 77 + 77},
    "flux_dev": {"context": 4096, "pooled": 768, "tokens": 256},
    "flux_schnell": {"context": 4096, "pooled": 768, "tokens": 256},
    "chroma": {"context": 4096, "pooled": None, "tokens": 256},  # T5-XXL only, no pooled vector
}
SD3_CLIP_ROWS = 77  # per 75-token CLIP chunk; T5 rows start after all CLIP chunks

_SD35M_DUAL_LAYERS = 13  # the published SD3.5 medium has dual attention (x_block.attn2) in blocks 0..12 of 24
_DEFAULT_BLOCKS = {"tiny": {"sd35m": 2, "flux": (2, 2)}, "real": {"sd35m": 2, "flux": (1, 2)},
                   "full": {"sd35m": 24, "flux": (19, 38)}}


def _check(family, size):
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")


def _sd3_config(size, blocks, text):
    """SD3.5-medium kwargs of ``OpenAISignatureMMDITWrapper`` (as the host's detection reports them)."""
    depth = 2 if size == "tiny" else 24
    num_blocks = blocks if blocks is not None else _DEFAULT_BLOCKS[size]["sd35m"]
    if size == "tiny" and num_blocks != depth:
        raise ValueError("a tiny SD3.5m has depth 2 and so 2 blocks (the host ties blocks to the width)")
    hidden = 64 * depth
    pos = 32 if size == "tiny" else 384
    dual = max(1, round(num_blocks * _SD35M_DUAL_LAYERS / 24))
    cfg = {
        "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": depth, "input_size": None,
        "adm_in_channels": text["pooled"],
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": text["context"], "out_features": hidden}},
        "num_patches": pos * pos, "pos_embed_max_size": pos, "qk_norm": "rms", "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": [i for i in range(min(dual, num_blocks - 1))],
    }
    if num_blocks != depth:
        cfg["num_blocks"] = num_blocks
    return cfg


def _flux_config(family, size, blocks, text):
    """Flux.1 kwargs of ``comfy.ldm.flux.model.Flux``, with what this host's ``FluxParams`` requires."""
    from comfy.ldm.flux.model import FluxParams

    depth, single = blocks if blocks is not None else _DEFAULT_BLOCKS[size]["flux"]
    hidden, heads = (256, 2) if size == "tiny" else (3072, 24)
    cfg = {
        "image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16,
        "vec_in_dim": text["pooled"], "context_in_dim": text["context"], "hidden_size": hidden,
        "mlp_ratio": 4.0, "num_heads": heads, "depth": depth, "depth_single_blocks": single,
        "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True, "guidance_embed": family == "flux_dev",
    }
    fields = {f.name: f for f in dataclasses.fields(FluxParams)}
    if "txt_ids_dims" in fields:  # 0.33.0: required field (no default); Flux.1 puts no text positions in rope
        cfg["txt_ids_dims"] = []
    return cfg


def _chroma_config(size, blocks, text):
    """Chroma kwargs of ``comfy.ldm.chroma.model.Chroma``: Flux's blocks without guidance or pooled input, their
    modulations from the "distilled guidance" approximator (in 64 wide: timestep, guidance and index embeddings;
    out = the model's width). The hosts' detection fixes the width at 3072 (approximator 5120 wide, 5 layers):
    a "tiny" Chroma is built, not detected."""
    from comfy.ldm.chroma.model import ChromaParams

    depth, single = blocks if blocks is not None else _DEFAULT_BLOCKS[size]["flux"]
    hidden, heads = (256, 2) if size == "tiny" else (3072, 24)
    cfg = {
        "image_model": "chroma", "in_channels": 64, "out_channels": 64, "patch_size": 2,
        "context_in_dim": text["context"], "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": heads,
        "depth": depth, "depth_single_blocks": single, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
        "in_dim": 64, "out_dim": hidden, "hidden_dim": 128 if size == "tiny" else 5120,
        "n_layers": 2 if size == "tiny" else 5,
    }
    fields = {f.name for f in dataclasses.fields(ChromaParams)}
    if "txt_ids_dims" in fields:  # 0.33.0
        cfg["txt_ids_dims"] = []
    if "vec_in_dim" in fields:
        cfg["vec_in_dim"] = None
    return cfg


def unet_config(family, size="tiny", blocks=None, text_dims=None):
    """The diffusion model's config (the host's ``unet_config``) for ``family`` at ``size``.

    ``blocks``: SD3.5m joint blocks (int) or Flux (double, single); ``text_dims``: ``{"context", "pooled"}``
    widths in place of the published ones (e.g. those of ``build_clip``'s tiny text encoders).
    """
    _check(family, size)
    text = {**TEXT_DIMS[family], **(text_dims or {})}
    if family == "sd35m":
        return _sd3_config(size, blocks, text)
    if family == "chroma":
        return _chroma_config(size, blocks, text)
    return _flux_config(family, size, blocks, text)


def model_config(family, size="tiny", blocks=None, text_dims=None, dtype=torch.float32):
    """The host's ``supported_models`` config object the detection would pick for this config
    (``SD3``, ``Flux`` or ``FluxSchnell``), with weight dtype ``dtype`` and the host's manual cast."""
    import comfy.model_detection
    import comfy.model_management as mm

    cfg = unet_config(family, size, blocks, text_dims)
    config = comfy.model_detection.model_config_from_unet_config(cfg)
    if config is None:
        raise RuntimeError(f"this host has no model config matching {family} ({cfg})")
    manual_cast = mm.unet_manual_cast(dtype, mm.get_torch_device(), config.supported_inference_dtypes)
    config.set_inference_dtype(dtype, manual_cast)
    return config


def _is_norm(module):
    return isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) or "Norm" in type(module).__name__


@torch.no_grad()
def init_random_weights_(model, seed=0):
    """Fill every parameter of ``model`` from ``seed`` (same values on every device and host):
    weights N(0, 1/fan_in), biases 0, norm scales (``weight`` or Flux 0.3.64's ``scale``) 1, other
    parameters as the host set them (must be finite);
    SD3's ``pos_embed`` buffer gets the fixed 2-D sin-cos table the published checkpoints hold."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if _is_norm(module):
                value = torch.zeros(param.shape) if name == "bias" else torch.ones(param.shape)
            elif name == "bias":
                value = torch.zeros(param.shape)
            elif param.ndim >= 2:
                value = torch.randn(param.shape, generator=generator) / math.sqrt(param[0].numel())
            elif torch.isfinite(param).all():  # e.g. CLIP's logit_scale, set by the host
                continue
            else:
                raise RuntimeError(f"no init rule for {module_name}.{name} {tuple(param.shape)}")
            param.copy_(value.to(device=param.device, dtype=param.dtype))
    pos_embed = getattr(model, "pos_embed", None)
    if isinstance(pos_embed, torch.Tensor):
        from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

        size = round(math.sqrt(pos_embed.shape[1]))
        table = torch.from_numpy(get_2d_sincos_pos_embed(pos_embed.shape[2], size)).float()
        pos_embed.copy_(table.unsqueeze(0).to(device=pos_embed.device, dtype=pos_embed.dtype))


def build_model(family, size="tiny", seed=0, dtype=torch.float32, blocks=None, text_dims=None):
    """A ModelPatcher of ``family`` with random weights, built through the host's classes (no detection:
    works for every size on both hosts, including the undetectable "real" SD3.5m and "tiny" Flux on 0.3.64)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    config = model_config(family, size, blocks, text_dims, dtype)
    model = config.get_model({})
    init_random_weights_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def _original_keys(diffusion_model, sd, prefix):
    """A host module's state dict in the published files' key layout: Flux's q/k RMS norms are
    ``*.norm.{query,key}_norm.scale`` there (0.3.64 names them so; 0.33.0 names them ``.weight`` and
    renames ``*_norm.scale`` on load); SD3's keys are the module's own."""
    from comfy.ldm.flux.model import Flux

    rename = isinstance(diffusion_model, Flux)
    out = {}
    for key, value in sd.items():
        if rename and key.endswith(("query_norm.weight", "key_norm.weight")):
            key = key[: -len("weight")] + "scale"
        out[prefix + key] = value
    return out


def state_dict_of(model, prefix=""):
    """The diffusion-model state dict of a ModelPatcher (e.g. from ``build_model``) in the published key
    layout, ``prefix="model.diffusion_model."`` for a single-file checkpoint. The tensors are the model's
    own (detached, not copied): what ``UNETLoader`` / ``comfy.sd.load_diffusion_model_state_dict`` read."""
    diffusion_model = model.model.diffusion_model
    sd = {k: v.detach() for k, v in diffusion_model.state_dict().items()}
    return _original_keys(diffusion_model, sd, prefix)


def state_dict(family, size="tiny", seed=0, dtype=torch.float32, blocks=None, text_dims=None, prefix=""):
    """``state_dict_of(build_model(...))``: random weights from ``seed`` in the published key layout."""
    return state_dict_of(build_model(family, size, seed, dtype, blocks, text_dims), prefix)


def shape_state_dict(family, size="full", blocks=None, text_dims=None, prefix=""):
    """The same keys and shapes on the ``meta`` device (no memory): enough for the host's detection."""
    config = model_config(family, size, blocks, text_dims, torch.float16)
    model = config.get_model({}, device=torch.device("meta"))
    return _original_keys(model.diffusion_model, dict(model.diffusion_model.state_dict()), prefix)


def detect(sd, prefix=""):
    """What the host's detection makes of ``sd``: (family name or None, the host's unet_config)."""
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet(sd, prefix)
    if config is None:
        return None, None
    return family_of_config(config), dict(config.unet_config)


def family_of_config(config):
    """"sd3", "flux_dev", "flux_schnell" or the host class name, from a ``supported_models`` object."""
    import comfy.supported_models as sm

    kind = type(config)
    if kind is sm.SD3:
        return "sd3"
    if kind is sm.FluxSchnell:
        return "flux_schnell"
    if kind is sm.Flux:
        return "flux_dev" if config.unet_config.get("guidance_embed") else "flux"
    if kind is sm.Chroma:
        return "chroma"
    return kind.__name__


def family_of(model):
    """``family_of_config`` of a ModelPatcher's model."""
    return family_of_config(model.model.model_config)


def load_detected(sd, dtype=None):
    """``comfy.sd.load_diffusion_model_state_dict`` (the host's UNETLoader path); raises when undetected."""
    import comfy.sd

    model = comfy.sd.load_diffusion_model_state_dict(dict(sd), model_options={} if dtype is None else {"dtype": dtype})
    if model is None:
        raise RuntimeError("the host did not detect this state dict")
    return model


def conditioning(family, batch=1, seed=0, tokens=None, guidance=3.5, text_dims=None):
    """A CONDITIONING ``[[cond, {"pooled_output": ...}]]`` of the shapes the host's text encoders give.

    SD3: cond (batch, 154, 4096) whose first 77 rows (the CLIP rows) are zero beyond channel 2048, as the
    host pads CLIP-L+G; pooled (batch, 2048). Flux: cond (batch, 256, 4096), pooled (batch, 768), and
    for ``flux_dev`` a ``"guidance"`` entry (``guidance=None``: none, the host then uses 3.5).
    """
    text = {**TEXT_DIMS[family], **(text_dims or {})}
    n = tokens or text["tokens"]
    generator = torch.Generator().manual_seed(int(seed))
    cond = torch.randn((batch, n, text["context"]), generator=generator)
    if family == "sd35m" and text["context"] == 4096:
        cond[:, :SD3_CLIP_ROWS, 768 + 1280:] = 0
    # Chroma: the host's T5-only encoder gives pooled_output None (0.3.64's Flux.encode_adm reads the key)
    extra = {"pooled_output": None if text["pooled"] is None else torch.randn((batch, text["pooled"]),
                                                                             generator=generator)}
    if family == "flux_dev" and guidance is not None:
        extra["guidance"] = float(guidance)
    return [[cond, extra]]


def latent(batch=1, height=16, width=24, seed=0):
    """A random 16-channel latent (SD3 and Flux.1 latents have 16 channels; 8x downscale)."""
    return torch.randn((batch, 16, height, width), generator=torch.Generator().manual_seed(int(seed)))


def sample_once(model, latent_image, positive, negative=None, cfg=1.0, sigma=None, seed=0):
    """One euler step from ``sigma`` (default: the model's sigma_max, 1.0) to 0 through the host's own
    ``CFGGuider`` (conds converted by the host, extra_conds such as Flux ``guidance`` applied): the
    denoised latent. ``cfg=1`` with no ``negative`` is a single model call on ``positive``."""
    import comfy.samplers

    sampling = model.get_model_object("model_sampling")
    start = float(sampling.sigma_max) if sigma is None else float(sigma)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative if negative is not None else positive)
    guider.set_cfg(cfg)
    noise = torch.randn(latent_image.shape, generator=torch.Generator().manual_seed(int(seed)))
    sampler = comfy.samplers.sampler_object("euler")
    return guider.sample(noise, latent_image, sampler, torch.tensor([start, 0.0]), seed=seed, disable_pbar=True)


def apply_model(model, x, sigma, cond):
    """One raw ``BaseModel.apply_model`` call (the denoised prediction) with hand-made inputs, bypassing the
    host's cond handling: ``cond`` is one ``[tensor, extras]`` entry of a CONDITIONING."""
    tensor, extra = cond
    pooled = extra.get("pooled_output")
    kwargs = {"y": pooled.expand(x.shape[0], -1)} if pooled is not None else {}
    if model.model.model_config.unet_config.get("guidance_embed"):
        kwargs["guidance"] = torch.full((x.shape[0],), float(extra.get("guidance", 3.5)))
    sigma = torch.full((x.shape[0],), float(sigma))
    transformer_options = model.model_options.get("transformer_options", {})
    return model.model.apply_model(x, sigma, c_crossattn=tensor.expand(x.shape[0], -1, -1),
                                   transformer_options=transformer_options, **kwargs)


# Tiny text encoders: (hidden, heads, layers). The SD3 encoder concatenates CLIP and T5 rows along the
# sequence, so its T5 must be 4096 wide (the 32128 x 4096 embedding dominates: ~0.13 G parameters).
_TINY_CLIP = {"clip_l": (64, 2, 3), "clip_g": (128, 2, 3)}  # 3 layers: SD3 reads the penultimate one
_TINY_T5 = {"sd35m": {"d_model": 4096, "num_layers": 1, "num_heads": 2, "d_kv": 32, "d_ff": 64},
            "flux": {"d_model": 64, "num_layers": 1, "num_heads": 2, "d_kv": 32, "d_ff": 128}}


def tiny_clip_text_dims(family):
    """The ``text_dims`` a model must be built with to take ``build_clip(family)``'s conditionings."""
    if family == "sd35m":
        return {"context": 4096, "pooled": _TINY_CLIP["clip_l"][0] + _TINY_CLIP["clip_g"][0]}
    if family == "chroma":
        return {"context": _TINY_T5["flux"]["d_model"], "pooled": None}
    return {"context": _TINY_T5["flux"]["d_model"], "pooled": _TINY_CLIP["clip_l"][0]}


def build_clip(family, seed=0, dtype=torch.float32, embedding_directory=None):
    """A tiny ``comfy.sd.CLIP`` of the family's text-encoder layout (the host's real tokenizers, tiny
    CLIP-L / CLIP-G / T5 weights): pair it with ``build_model(..., text_dims=tiny_clip_text_dims(family))``."""
    import comfy.sd
    import comfy.supported_models as sm

    options = {"dtype": dtype}
    names = {"sd35m": ("clip_l", "clip_g"), "chroma": ()}.get(family, ("clip_l",))
    for name in names:
        hidden, heads, layers = _TINY_CLIP[name]
        options[f"{name}_model_config"] = {"hidden_size": hidden, "intermediate_size": 2 * hidden,
                                           "num_attention_heads": heads, "num_hidden_layers": layers,
                                           "projection_dim": hidden}
    options["t5xxl_model_config"] = dict(_TINY_T5["sd35m" if family == "sd35m" else "flux"])
    if family == "sd35m":  # the checkpoint-free target with all three encoders
        import comfy.text_encoders.sd3_clip as sd3_clip

        target = sm.supported_models_base.ClipTarget(sd3_clip.SD3Tokenizer, sd3_clip.sd3_clip(
            clip_l=True, clip_g=True, t5=True, dtype_t5=dtype))
    elif family == "chroma":  # T5 alone, as the host's Chroma model config pairs it
        import comfy.text_encoders.pixart_t5 as pixart_t5

        target = sm.supported_models_base.ClipTarget(pixart_t5.PixArtTokenizer, pixart_t5.pixart_te(dtype_t5=dtype))
    else:
        import comfy.text_encoders.flux as flux_te

        target = sm.supported_models_base.ClipTarget(flux_te.FluxTokenizer, flux_te.flux_clip(dtype_t5=dtype))
    clip = comfy.sd.CLIP(target, embedding_directory=embedding_directory, model_options=options)
    init_random_weights_(clip.cond_stage_model, seed)
    return clip
