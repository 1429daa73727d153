"""What LEDITS++ needs to know about a host MODEL: its family, where 1/4-resolution cross-attention is."""

from __future__ import annotations

import torch

from .objects import ModelKind

SUPPORTED = ("SD1.x, SD2.x (eps and v-prediction), SDXL base, SD3/SD3.5, Flux.1 (dev, schnell) and Chroma models")
FLOW_FAMILIES = ("sd3", "flux", "chroma")


def model_kind(model) -> ModelKind:
    """Family / prediction / latent format of a ModelPatcher; raises for anything but SD1.x, SD2.x, SDXL,
    SD3.x (MMDiT), Flux.1 and Chroma (Flux's blocks with real CFG; not Chroma Radiance, a pixel-space model)."""
    import comfy.model_base as mb
    import comfy.supported_models as sm
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    base = model.model
    name = type(base.model_config).__name__
    unet = isinstance(getattr(base, "diffusion_model", None), UNetModel)
    distilled = False
    if unet and type(base) is mb.SDXL:
        family = "sdxl"
    elif unet and type(base) is mb.BaseModel:
        family = "sd2" if isinstance(base.model_config, sm.SD20) else "sd1"
    elif type(base) is mb.SD3:
        family = "sd3"
    elif type(base) is mb.Flux:
        family = "flux"
        distilled = bool(base.model_config.unet_config.get("guidance_embed", False))
    elif type(base) is getattr(mb, "Chroma", None):
        family = "chroma"  # its "distilled guidance" layer makes modulations only: real CFG, as SD3
    else:
        raise ValueError(f"LEDITS++ does not support this model ({name}); it supports {SUPPORTED}.")
    prediction = {mb.ModelType.EPS: "eps", mb.ModelType.V_PREDICTION: "v"}.get(base.model_type)
    if prediction is None and noise_parametrization(model) == "flow":
        prediction = "flow"  # FLOW (SD3, schnell) or FLUX (dev, its own shift): CONST sampling either way
    if prediction is None or (prediction == "flow") != (family in FLOW_FAMILIES):
        raise ValueError(f"LEDITS++ supports eps and v-prediction UNets and flow-matching SD3/Flux/Chroma models; {name} "
                         f"uses {base.model_type.name}.")
    return ModelKind(family, prediction, type(base.latent_format).__name__, distilled)


def noise_parametrization(model) -> str:
    """How the host's model_sampling makes a noisy state: "flow" for x = (1 - sigma) x0 + sigma eps (CONST,
    the flow-matching models), "ve" for x = x0 + sigma eps (every other model, in k-diffusion form)."""
    import comfy.model_sampling

    sampling = model.get_model_object("model_sampling")
    return "flow" if isinstance(sampling, comfy.model_sampling.CONST) else "ve"


def quarter_resolution_blocks(model) -> list[tuple[str, int]]:
    """(block_name, number) of the UNet blocks that run at 1/4 of the latent resolution (level 2).

    Input blocks: 1 + sum over earlier levels of (res blocks + downsample); output blocks mirror it.
    SD1.x/2.x -> input 7, 8 / output 3, 4, 5;  SDXL -> input 7, 8 / output 0, 1, 2.
    """
    cfg = model.model.model_config.unet_config
    if "channel_mult" not in cfg:  # a transformer (SD3, Flux): no UNet levels
        return []
    mult = list(cfg["channel_mult"])
    nres = cfg["num_res_blocks"]
    nres = list(nres) if isinstance(nres, (list, tuple)) else [nres] * len(mult)
    level = 2
    if len(mult) <= level:
        return []
    first_in = 1 + sum(nres[i] + 1 for i in range(level))
    inputs = [("input", first_in + j) for j in range(nres[level])]
    first_out = sum(nres[i] + 1 for i in range(len(mult) - 1, level, -1))
    outputs = [("output", first_out + j) for j in range(nres[level] + 1)]
    return inputs + outputs


def empty_conditioning(clip, kind: ModelKind) -> list:
    """The unconditional CONDITIONING: the empty prompt (SD1/2), zeros of its shape for SDXL (as diffusers)."""
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    if kind.family != "sdxl":
        return cond
    out = []
    for tensor, extra in cond:
        extra = dict(extra)
        if "pooled_output" in extra:
            extra["pooled_output"] = torch.zeros_like(extra["pooled_output"])
        out.append([torch.zeros_like(tensor), extra])
    return out


def with_size_conditioning(conditioning: list, kind: ModelKind, latent_shape) -> list:
    """SDXL: fill width/height/target size from the latent (H, W order kept), where a cond does not set them."""
    if kind.family != "sdxl":
        return conditioning
    height, width = int(latent_shape[-2]) * 8, int(latent_shape[-1]) * 8
    size = {"width": width, "height": height, "target_width": width, "target_height": height,
            "crop_w": 0, "crop_h": 0}
    return [[t, {**size, **extra}] for t, extra in conditioning]


def conditioning_to_cpu(conditioning: list) -> list:
    """A copy of a CONDITIONING with its tensors on the CPU (so cached values do not pin GPU memory)."""
    def move(v):
        return v.detach().cpu() if isinstance(v, torch.Tensor) else v
    return [[move(t), {k: move(v) for k, v in extra.items()}] for t, extra in conditioning]


def transformer_blocks(model) -> list[tuple[str, int, int]]:
    """(block_name, number, level) of every UNet block with a spatial transformer; level = downsamplings
    from the latent (0: latent size, 2: 1/4 of it), read from the module structure."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

    unet = model.model.diffusion_model

    def has(block, kind):
        return any(isinstance(m, kind) for m in block.modules())

    out, level = [], 0
    for number, block in enumerate(unet.input_blocks):
        if has(block, SpatialTransformer):
            out.append(("input", number, level))
        if has(block, Downsample):
            level += 1
    if unet.middle_block is not None and has(unet.middle_block, SpatialTransformer):
        out.append(("middle", 0, level))
    for number, block in enumerate(unet.output_blocks):
        if has(block, SpatialTransformer):
            out.append(("output", number, level))
        if has(block, Upsample):
            level -= 1
    return out
