"""The small SD1.x-family "toy" model, trained here on a synthetic world of coloured shapes
(``scripts/toy_world.py``, ``scripts/train_toy.py``), built from the host's own classes: ``comfy.supported_models.SD15`` (UNetModel), ``comfy.sd.CLIP`` (the real CLIP tokenizer,
a small CLIP text encoder) and ``comfy.sd.VAE`` (AutoencoderKL at small width, 4x downscale).

* UNet: the SD1.x block layout (4 levels, 2 res blocks a level; transformers at levels 1 and 2 and in
  the middle, none at the full-resolution level 0), model channels 32. On 128 px scenes the latent is
  32x32 and the 1/4-resolution cross-attention blocks (input 7, 8 / output 3, 4, 5, as in SD1.5) run
  at 8x8 cells.
* Text encoder: the host's ``CLIPTextModel`` with hidden size 64, 2 layers, 4 heads. Only the token
  rows the toy captions use are trained and stored; the other rows are refilled from a fixed seed at
  load (their values are never read by the toy world).
* VAE: the host's ``AutoencoderKL`` with ``ch`` 32, ``ch_mult`` [1, 1, 2] (4x downscale), latents
  scaled so that SD1.5's latent scale factor 0.18215 gives them unit variance.
* VP schedule and epsilon prediction: the host's SD1.5 model sampling (linear betas 0.00085..0.012).

The toy flow transformer (``toy_sd3.safetensors``, issue 18), trained on the same world, is made of the host's
SD3 classes (``comfy.supported_models.SD3``: ``model_base.SD3`` around the MMDiT, flow matching with the SD3
model sampling, shift 3, and the SD3 latent format):

* MMDiT: depth 2 (the host's width rule: 128 wide, 2 heads of 64), 4 joint blocks (the last one pre-only for
  the text stream, as in SD3), MLP ratio 2, RMS q/k norm, no learned position table (the host's sin-cos
  positions, so any latent size runs); patch 2, so a 32x32 latent is 16x16 image tokens.
* Text encoder: the toy CLIP above (its context rows and pooled vector; 64 wide), trained with it.
* VAE: the toy VAE's layout with 16 latent channels, scaled and shifted so that the SD3 latent format's
  process_in gives zero mean and a standard deviation of 0.88 (the training's fold, since corrected, set the
  spread before the per-channel shift).

``load_toy_model()`` returns ``(MODEL, CLIP, VAE)`` as ``CheckpointLoaderSimple`` would (``load_toy_model(
kind="sd3")`` the flow transformer's); the LEDITS Toy Model node (``toy_node.py``) gives them to
users, to try the pack without a checkpoint. ``comfy.*`` is imported inside functions.
"""

from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "toy"
WEIGHTS = ASSETS / "toy_sd15.safetensors"
FLOW_WEIGHTS = ASSETS / "toy_sd3.safetensors"
KINDS = ("sd15", "sd3")
IMAGE_SIZE = 128
LATENT_SIZE = 32
DOWNSCALE = 4

UNET_CONFIG = {
    "use_checkpoint": False, "image_size": LATENT_SIZE, "in_channels": 4, "out_channels": 4,
    "model_channels": 32, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [0, 0, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "context_dim": 64, "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_spatial_transformer": True, "legacy": False,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
UNET_HEADS = 4
TEXT_CONFIG = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
               "num_hidden_layers": 2, "projection_dim": 64}
VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": IMAGE_SIZE, "in_channels": 3, "out_ch": 3,
                "ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
VAE_CONFIG = {"params": {"embed_dim": 4, "ddconfig": VAE_DDCONFIG}}
FLOW_VAE_CONFIG = {"params": {"embed_dim": 16, "ddconfig": {**VAE_DDCONFIG, "z_channels": 16}}}
MMDIT_CONFIG = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "num_blocks": 4, "mlp_ratio": 2.0,
    "adm_in_channels": TEXT_CONFIG["projection_dim"], "input_size": None,
    "context_embedder_config": {"target": "torch.nn.Linear",
                                "params": {"in_features": TEXT_CONFIG["hidden_size"], "out_features": 128}},
    "pos_embed_max_size": None, "num_patches": None, "qk_norm": "rms", "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": [],
}
TOKEN_ROWS_KEY = "te.token_rows"
TOKEN_IDS_KEY = "te.token_ids"
_FILL_SEED = 20261202


def model_config():
    """The host's SD15 model config holding our UNet config (heads overridden after the family's extras)."""
    import comfy.supported_models

    cfg = comfy.supported_models.SD15(dict(UNET_CONFIG))
    cfg.unet_config.update({"num_heads": UNET_HEADS, "num_head_channels": -1})
    return cfg


def _patched(cfg, dtype):
    """The model of a host model config (weights not set) at ``dtype``, wrapped in a ModelPatcher."""
    import comfy.model_management as mm
    import comfy.model_patcher

    device = mm.get_torch_device()
    cfg.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, device, cfg.supported_inference_dtypes))
    model = cfg.get_model({})
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())


def build_unet(dtype=torch.float32):
    """The UNet (weights not set) wrapped in a ModelPatcher."""
    return _patched(model_config(), dtype)


def flow_model_config():
    """The host's SD3 model config holding the toy MMDiT's config."""
    import comfy.supported_models

    return comfy.supported_models.SD3(dict(MMDIT_CONFIG))


def build_flow_model(dtype=torch.float32):
    """The toy MMDiT (weights not set) wrapped in a ModelPatcher."""
    return _patched(flow_model_config(), dtype)


def build_clip(dtype=torch.float32):
    """The host's CLIP (real tokenizer) with the small text encoder (weights not set)."""
    import comfy.sd

    target = model_config().clip_target()
    return comfy.sd.CLIP(target, model_options={"dtype": dtype, "clip_l_model_config": dict(TEXT_CONFIG)})


def wrap_vae(state_dict, dtype=None, config=VAE_CONFIG):
    """``comfy.sd.VAE`` around our AutoencoderKL weights. The host sets an 8x ratio and 4 channels for a VAE
    given by config; ours downscales 4x (and the flow model's has 16 channels), so they are set to what the
    weights do."""
    import comfy.sd

    vae = comfy.sd.VAE(sd=state_dict, config=config, dtype=dtype)
    vae.downscale_ratio = DOWNSCALE
    vae.upscale_ratio = DOWNSCALE
    vae.latent_channels = config["params"]["embed_dim"]
    return vae


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    import comfy.utils

    if not Path(path).is_file():
        raise FileNotFoundError(f"toy model weights not found at {path}; they are committed under assets/toy/ "
                                "(or train them with scripts/train_toy.py)")
    return comfy.utils.load_torch_file(str(path), safe_load=True)


def load_toy_model(path: Path | None = None, dtype=torch.float32, kind: str = "sd15"):
    """``(MODEL, CLIP, VAE)`` of a trained toy model, through the host's classes: ``kind`` "sd15" (the UNet,
    ``WEIGHTS``) or "sd3" (the flow transformer, ``FLOW_WEIGHTS``)."""
    if kind not in KINDS:
        raise ValueError(f"toy model kind must be one of {KINDS}, not {kind!r}")
    flow = kind == "sd3"
    sd = _load_file(path or (FLOW_WEIGHTS if flow else WEIGHTS))
    unet = build_flow_model(dtype) if flow else build_unet(dtype)
    unet.model.diffusion_model.load_state_dict(
        {k[5:]: v.to(dtype) for k, v in sd.items() if k.startswith("unet.")}, strict=True)
    clip = build_clip(dtype)
    te_sd = clip.cond_stage_model.state_dict()
    table_key = next(k for k in te_sd if k.endswith("token_embedding.weight"))
    g = torch.Generator().manual_seed(_FILL_SEED)
    rows = sd[TOKEN_ROWS_KEY].float()
    table = torch.randn(te_sd[table_key].shape, generator=g) * rows.std()
    table[sd[TOKEN_IDS_KEY].long()] = rows
    new_te = {k[3:]: v for k, v in sd.items() if k.startswith("te.") and k not in (TOKEN_ROWS_KEY, TOKEN_IDS_KEY)}
    new_te[table_key] = table
    clip.cond_stage_model.load_state_dict({k: v.float() for k, v in new_te.items()}, strict=True)
    vae = wrap_vae({k[4:]: v.float() for k, v in sd.items() if k.startswith("vae.")},
                   config=FLOW_VAE_CONFIG if flow else VAE_CONFIG)
    return unet, clip, vae
