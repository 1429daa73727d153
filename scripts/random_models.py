"""Random-weight SD1.5 / SD2.x-v / SDXL models built from the host's own classes.

Weights cannot be downloaded in our test and benchmark environments, so this module builds the
host's real model classes (``comfy.supported_models``, ``comfy.sd.CLIP``, ``comfy.sd.VAE``) from
configs and fills every parameter deterministically from a seed (the host's ops leave weights
uninitialised). The returned ``(MODEL, CLIP, VAE)`` behave like the outputs of the host's
``CheckpointLoaderSimple``.

Sizes:

* ``"tiny"``: the real block layout of the family (levels, res blocks, which levels carry
  transformers, hence the same ``(block_name, number)`` attention keys) with tiny channels and
  tiny 3-layer text encoders that still use the host's real CLIP tokenizer.
* ``"full"``: the real UNet, text encoder and VAE sizes (for benchmarks).
* ``"slim"``: "full" with ``channel_mult`` 1 at every level: a much smaller UNet that the host's
  checkpoint detection still recognises (see ``save_random_checkpoint``).

Test, benchmark and demo support, not part of the pack (the host never loads it): get it with
``hostenv.import_random_models()``, which imports the host first. The host (``comfy.*``) is imported
lazily inside functions: importing this module does nothing.
"""

import math

import torch

FAMILIES = ("sd15", "sd2v", "sdxl")
SIZES = ("tiny", "slim", "full")

# Real UNet hyperparameters, as the host's model detection reports them for each family.
_UNET_FULL = {
    "sd15": {
        "model_channels": 320, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "context_dim": 768, "use_linear_in_transformer": False, "adm_in_channels": None,
    },
    "sd2v": {
        "model_channels": 320, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "context_dim": 1024, "use_linear_in_transformer": True, "adm_in_channels": None,
    },
    "sdxl": {
        "model_channels": 320, "channel_mult": [1, 2, 4], "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "context_dim": 2048, "use_linear_in_transformer": True, "adm_in_channels": 2816,
        "num_classes": "sequential",
    },
}
_UNET_COMMON = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "use_spatial_transformer": True, "legacy": False,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

# Tiny text encoders: (hidden size, heads). 3 layers, because SD2 and SDXL read the penultimate one.
_TINY_TE = {"clip_l": (64, 2), "clip_h": (96, 2), "clip_g": (128, 2)}
_TINY_TE_LAYERS = 3
_SDXL_SIZE_EMBEDS = 6 * 256  # encode_adm: 6 size/crop values x Timestep(256)

# Tiny UNets: real layout, tiny channels. Heads: SD1.x fixes the count, SD2/XL fix the head width.
_UNET_TINY = {
    "sd15": {"model_channels": 32, "context_dim": _TINY_TE["clip_l"][0], "num_heads": 2, "num_head_channels": -1},
    "sd2v": {"model_channels": 32, "context_dim": _TINY_TE["clip_h"][0], "num_heads": -1, "num_head_channels": 32},
    "sdxl": {
        "model_channels": 32, "num_heads": -1, "num_head_channels": 32,
        "transformer_depth": [0, 0, 1, 1, 2, 2], "transformer_depth_middle": 1,
        "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
        "context_dim": _TINY_TE["clip_l"][0] + _TINY_TE["clip_g"][0],
        "adm_in_channels": _TINY_TE["clip_g"][0] + _SDXL_SIZE_EMBEDS,
    },
}

_TEXT_ENCODERS = {"sd15": ("clip_l",), "sd2v": ("clip_h",), "sdxl": ("clip_l", "clip_g")}

_VAE_DDCONFIG = {
    "full": {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2},
    "tiny": {"ch": 32, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1},
}

# Sub-seeds so that the three components do not share random streams.
_SEED_OFFSETS = {"unet": 0, "clip": 1, "vae": 2}


def _check(family, size):
    """Raise ValueError for an unknown family or size."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")


def unet_config(family, size="tiny"):
    """The host-style UNet config dict (``UNetModel`` kwargs, without dtype) of a family/size."""
    _check(family, size)
    cfg = {**_UNET_COMMON, **_UNET_FULL[family]}
    if size == "tiny":
        cfg.update(_UNET_TINY[family])
    elif size == "slim":
        cfg["channel_mult"] = [1] * len(cfg["channel_mult"])
    return cfg


def _generator(seed, part):
    """A CPU generator for one component, derived from the user seed."""
    return torch.Generator(device="cpu").manual_seed(int(seed) * 16 + _SEED_OFFSETS[part])


def _is_norm(module):
    """True for normalisation layers (their weight is a scale, initialised to 1)."""
    return isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) or "Norm" in type(module).__name__


def _init_value(module, name, param, generator):
    """A deterministic float32 initial value for one parameter, or None to keep it."""
    shape = tuple(param.shape)
    if _is_norm(module):
        return torch.ones(shape) if name == "weight" else torch.zeros(shape)
    if isinstance(module, torch.nn.Embedding):
        return torch.randn(shape, generator=generator)
    if name == "bias":
        return torch.zeros(shape)
    if param.ndim >= 2:
        fan_in = param[0].numel()
        return torch.randn(shape, generator=generator) / math.sqrt(fan_in)
    return None


@torch.no_grad()
def init_random_weights_(model, seed, part="unet"):
    """Fill every parameter of ``model`` in place from ``seed`` (same values on every device).

    Linear/conv weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), biases 0, norm scales 1.
    Other parameters (e.g. CLIP's ``logit_scale``) keep the value the host gave them.
    """
    generator = _generator(seed, part)
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            value = _init_value(module, name, param, generator)
            if value is None:
                if not torch.isfinite(param).all():
                    raise RuntimeError(f"uninitialised parameter {module_name}.{name} has no init rule")
                continue
            param.copy_(value.to(device=param.device, dtype=param.dtype))


def _model_config(family, size):
    """The host's ``supported_models`` config object of the family, holding our UNet config."""
    import comfy.supported_models

    config_cls = {"sd15": comfy.supported_models.SD15, "sd2v": comfy.supported_models.SD20,
                  "sdxl": comfy.supported_models.SDXL}[family]
    model_config = config_cls(unet_config(family, size))
    if size == "tiny":  # the family's unet_extra_config has overwritten the head settings
        model_config.unet_config.update({k: _UNET_TINY[family][k] for k in ("num_heads", "num_head_channels")})
    return model_config


def build_unet(family, size="tiny", seed=0, dtype=torch.float32):
    """Build the family's diffusion model with random weights, wrapped in a ModelPatcher."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config = _model_config(family, size)
    load_device = mm.get_torch_device()
    manual_cast = mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    if family == "sd2v":  # SD2.x 768-v: the host would detect v-prediction from the weights
        model = comfy.model_base.BaseModel(model_config, model_type=comfy.model_base.ModelType.V_PREDICTION)
    else:
        model = model_config.get_model({})
    init_random_weights_(model.diffusion_model, seed, "unet")
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())


def _te_model_options(family, size, dtype):
    """``model_options`` for ``comfy.sd.CLIP``: tiny sizes go in ``<name>_model_config`` overrides."""
    options = {} if dtype is None else {"dtype": dtype}
    if size == "tiny":
        for name in _TEXT_ENCODERS[family]:
            hidden, heads = _TINY_TE[name]
            options[f"{name}_model_config"] = {
                "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_attention_heads": heads,
                "num_hidden_layers": _TINY_TE_LAYERS, "projection_dim": hidden,
            }
    return options


def build_clip(family, size="tiny", seed=0, dtype=None, embedding_directory=None):
    """Build the family's text encoder(s) with random weights and the host's real tokenizer.

    ``dtype=None`` lets the host choose, as it does for a loaded checkpoint (fp16 on CPU too).
    """
    import comfy.sd

    target = _model_config(family, size).clip_target()
    clip = comfy.sd.CLIP(target, embedding_directory=embedding_directory,
                         model_options=_te_model_options(family, size, dtype))
    init_random_weights_(clip.cond_stage_model, seed, "clip")
    return clip


def vae_config(size="tiny", channels=4):
    """The ``config`` argument of ``comfy.sd.VAE`` (AutoencoderKL, 8x downscale; 4 latent channels, 16 for the
    SD3 / Flux.1 layout)."""
    ddconfig = {"double_z": True, "z_channels": channels, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "attn_resolutions": [], "dropout": 0.0, **_VAE_DDCONFIG["tiny" if size == "tiny" else "full"]}
    return {"params": {"embed_dim": channels, "ddconfig": ddconfig}}


def build_vae(size="tiny", seed=0, dtype=None, channels=4):
    """Build an SD-style KL VAE with random weights (``dtype=None``: the host's choice; ``channels``: latent)."""
    import comfy.ldm.models.autoencoder
    import comfy.sd

    config = vae_config(size, channels)
    autoencoder = comfy.ldm.models.autoencoder.AutoencoderKL(**config["params"])
    init_random_weights_(autoencoder, seed, "vae")
    return comfy.sd.VAE(sd=autoencoder.state_dict(), config=config, dtype=dtype)


def build_random_model(family, size="tiny", seed=0, dtype=torch.float32, embedding_directory=None):
    """Build ``(model_patcher, clip, vae)`` for ``family`` with random weights from ``seed``.

    ``family``: "sd15", "sd2v" (SD2.x 768-v, v-prediction) or "sdxl"; ``size``: "tiny", "slim", "full";
    ``dtype``: the UNet weight dtype (text encoder and VAE dtypes are chosen by the host, as for
    a loaded checkpoint); ``embedding_directory``: where the tokenizer looks for ``embedding:`` names.
    """
    _check(family, size)
    model = build_unet(family, size, seed, dtype)
    clip = build_clip(family, size, seed, embedding_directory=embedding_directory)
    vae = build_vae(size, seed)
    return model, clip, vae


def save_random_checkpoint(path, family="sd15", seed=0, size="slim", dtype=torch.float16):
    """Write a single-file safetensors checkpoint in the original key layout (through the host's own
    ``comfy.sd.save_checkpoint``) that ``comfy.sd.load_checkpoint_guess_config`` detects as ``family``.

    The host builds the text encoder(s) and VAE of a checkpoint from fixed configs, so those are
    always full size (missing weights would stay uninitialised); ``size`` applies to the UNet:
    "full" (SD1.5: about 2.1 GB at fp16) or "slim" (SD1.5: about 0.64 GB). SD2 768-v is refused: the
    host recognises SD2 v-prediction from trained weight statistics, not from a key.
    """
    import comfy.sd

    if family not in ("sd15", "sdxl") or size not in ("slim", "full"):
        raise ValueError("save_random_checkpoint supports families sd15/sdxl and sizes slim/full")
    model = build_unet(family, size, seed, dtype)
    clip = build_clip(family, "full", seed, dtype=dtype)
    vae = build_vae("full", seed, dtype=dtype)
    comfy.sd.save_checkpoint(str(path), model, clip, vae, metadata={"random_weights_seed": str(seed)})
