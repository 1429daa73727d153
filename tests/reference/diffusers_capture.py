"""Reference harness: run diffusers' own LEDITS++ pipeline on a tiny random model and capture
its intermediate tensors, so our implementation can be checked against diffusers on exactly the
same inputs.

Nothing here re-implements LEDITS++.  Every captured tensor is a value diffusers computed itself,
recorded while its code runs (forward hooks on the UNet, attributes set on the pipeline and
scheduler *instances*, and module globals of
``diffusers.pipelines.ledits_pp.pipeline_leditspp_stable_diffusion`` (or ``..._xl``) swapped for
recording wrappers while a capture runs and restored afterwards).  diffusers' files are never edited.
The only values not recorded verbatim are pure reshapes/views of recorded tensors (documented as
such) and the scheduler bookkeeping read from the scheduler object.

Target: diffusers 0.42.1 (``LEditsPPPipelineStableDiffusion``, ``LEditsPPPipelineStableDiffusionXL``).  See NOTES.md for what diffusers
computes, with file:line pointers.

Conventions used in the docs below
  B   images in the batch (diffusers ``pipe.batch_size``)
  N   editing concepts (``len(editing_prompts)``)
  C   latent channels (4)
  h,w latent height/width;  rh, rw = h//4, w//4 (diffusers ``att_res``)
  K   text tokens (77)
  i   index of the editing loop in ``pipe.__call__`` (0 = noisiest kept step)
"""

from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    LEditsPPPipelineStableDiffusion,
    LEditsPPPipelineStableDiffusionXL,
    UNet2DConditionModel,
)
from diffusers.pipelines.ledits_pp import pipeline_leditspp_stable_diffusion as _sd_mod
from diffusers.pipelines.ledits_pp import pipeline_leditspp_stable_diffusion_xl as _xl_mod

__all__ = [
    "SD15_BETAS",
    "LeditsCapture",
    "InversionCapture",
    "InversionStep",
    "EditStep",
    "comfyui_tokenizer_dir",
    "build_tokenizer",
    "build_tiny_sd_pipeline",
    "build_tiny_sdxl_pipeline",
    "make_scheduler",
    "capture_ledits_run",
    "diffusers_schedule",
    "diffusers_gaussian_kernel",
    "diffusers_gaussian_smoothing",
    "diffusers_dpm_sde_step",
    "diffusers_ddim_step",
    "vp_to_k",
    "k_to_vp",
    "sigma_from_abar",
    "abar_from_sigma",
]

# Stable Diffusion 1.5's noise schedule (scheduler_config.json of SD1.5).
SD15_BETAS = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
)


# --------------------------------------------------------------------------------------------
# Tiny model construction
# --------------------------------------------------------------------------------------------


def comfyui_tokenizer_dir() -> Path | None:
    """The host's real CLIP-L tokenizer folder (``comfy/sd1_tokenizer`` of the host that
    ``scripts/hostenv.py`` finds: ``$COMFYUI_PATH``, else ``~/ComfyUI``, else ``../shared/ComfyUI``;
    the host is not imported) or None when it is absent."""
    scripts = str(Path(__file__).resolve().parents[2] / "scripts")
    if scripts not in sys.path:
        sys.path.append(scripts)
    import hostenv

    root = hostenv.find_host()
    if root is None:
        return None
    d = root / "comfy" / "sd1_tokenizer"
    return d if (d / "vocab.json").is_file() and (d / "merges.txt").is_file() else None


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte -> printable unicode map (same table as CLIP's BPE vocab starts with).
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def build_tokenizer(prefer_real: bool = True, pad_token: str = "<|endoftext|>"):
    """A ``CLIPTokenizer``.

    ``prefer_real=True`` and the host checkout present: the real SD1.x CLIP-L tokenizer loaded by
    path (``model_max_length`` forced to 77: the host's tokenizer_config.json says 8192, which would
    make diffusers pad the unconditional prompt to 8192 tokens).  Otherwise a tiny character-level
    CLIP BPE tokenizer (514 byte tokens + a few merges + BOS/EOS).  ``pad_token``: SD1.x and
    SDXL's first tokenizer pad with EOS; SDXL's tokenizer_2 pads with "!"."""
    from transformers import CLIPTokenizer

    d = comfyui_tokenizer_dir() if prefer_real else None
    if d is not None:
        return CLIPTokenizer.from_pretrained(str(d), model_max_length=77, pad_token=pad_token)
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for word in ("red", "hat", "cat", "dog", "glasses", "smile", "beard"):
        cur = word[0]
        for j, ch in enumerate(word[1:]):
            nxt = ch + ("</w>" if j == len(word) - 2 else "")
            merges.append((cur, nxt))
            cur = cur + nxt
            if cur not in vocab:
                vocab.append(cur)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={v: k for k, v in enumerate(vocab)}, merges=merges, model_max_length=77, pad_token=pad_token
    )


def make_scheduler(scheduler: str = "dpmsolver", ddim_set_alpha_to_one: bool = False):
    """The two schedulers diffusers' LEDITS++ supports, with SD1.5's betas.

    ``"dpmsolver"``: ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2)``
    (defaults otherwise: final_sigmas_type="zero", lower_order_final=True, euler_at_final=False).
    ``"ddim"``: ``DDIMScheduler`` with SD1.5's ``clip_sample=False, set_alpha_to_one=False``."""
    if scheduler == "dpmsolver":
        return DPMSolverMultistepScheduler(**SD15_BETAS, algorithm_type="sde-dpmsolver++", solver_order=2)
    if scheduler == "ddim":
        return DDIMScheduler(**SD15_BETAS, clip_sample=False, set_alpha_to_one=ddim_set_alpha_to_one)
    raise ValueError(f"scheduler must be 'dpmsolver' or 'ddim', not {scheduler!r}")


def build_tiny_sd_pipeline(
    seed: int = 0,
    scheduler: str = "dpmsolver",
    *,
    prefer_real_tokenizer: bool = True,
    attention_head_dim: int = 2,
    attn_logit_gain: float = 4.0,
    sample_size: int = 32,
) -> LEditsPPPipelineStableDiffusion:
    """``LEditsPPPipelineStableDiffusion`` built from tiny configs with seeded random weights.

    UNet: SD1.5 block layout (CrossAttnDownBlock2D x3 + DownBlock2D / UpBlock2D + CrossAttnUpBlock2D
    x3, layers_per_block 2, one transformer block per attention) with block_out_channels
    (32, 32, 64, 64), cross_attention_dim 32 and ``attention_head_dim`` heads (diffusers' SD naming:
    this number is the *head count*).  ``attn_logit_gain`` multiplies the to_q and to_k weights of
    every cross-attention (attn2) so that the random model's attention maps are peaked rather than
    near-uniform (makes the M1 masks non-trivial).  Text encoder: CLIPTextModel hidden 32, 2
    layers, 4 heads, 77 positions.  VAE: 4 levels (8x downscale), 4 latent channels, SD's
    scaling_factor 0.18215.  All weights come from torch's default initialisers under
    ``torch.manual_seed(seed)`` (deterministic).  safety_checker None, progress bars off."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(prefer_real_tokenizer)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=attention_head_dim,
        norm_num_groups=8,
    )
    with torch.no_grad():
        for name, mod in unet.named_modules():
            if name.endswith("attn2"):
                mod.to_q.weight.mul_(attn_logit_gain)
                mod.to_k.weight.mul_(attn_logit_gain)
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=sample_size * 8,
    )
    for m in (unet, text_encoder, vae):
        m.eval()
    pipe = LEditsPPPipelineStableDiffusion(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler(scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl_pipeline(
    seed: int = 0,
    scheduler: str = "dpmsolver",
    *,
    prefer_real_tokenizer: bool = True,
    attention_head_dim: int = 2,
    attn_logit_gain: float = 4.0,
    sample_size: int = 32,
) -> LEditsPPPipelineStableDiffusionXL:
    """``LEditsPPPipelineStableDiffusionXL`` from tiny configs with seeded random weights.

    UNet: SDXL block layout (DownBlock2D + CrossAttnDownBlock2D x2 / CrossAttnUpBlock2D x2 +
    UpBlock2D, layers_per_block 2, transformer_layers_per_block (1, 1, 2), linear projections,
    ``addition_embed_type="text_time"``) with block_out_channels (32, 64, 64), ``attention_head_dim``
    heads, cross_attention_dim 64 (= 32 + 32 from the two text encoders).  Text encoders: CLIPTextModel
    and CLIPTextModelWithProjection (hidden 32, projection 32), both using the penultimate hidden
    state as SDXL does.  tokenizer pads with EOS, tokenizer_2 with "!" (as SDXL).  VAE as in
    ``build_tiny_sd_pipeline`` with SDXL's scaling_factor 0.13025.  force_zeros_for_empty_prompt=True
    (SDXL default: the unconditional embedding is zeros), no watermarker."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tokenizer(prefer_real_tokenizer)
    tokenizer_2 = build_tokenizer(prefer_real_tokenizer, pad_token="!")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=attention_head_dim,
        cross_attention_dim=64,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
        norm_num_groups=8,
    )
    with torch.no_grad():
        for name, mod in unet.named_modules():
            if name.endswith("attn2"):
                mod.to_q.weight.mul_(attn_logit_gain)
                mod.to_k.weight.mul_(attn_logit_gain)

    def text_cfg(tok, **extra):
        return CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **extra,
        )

    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(text_cfg(tokenizer))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_cfg(tokenizer_2, projection_dim=32))
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=sample_size * 8,
        scaling_factor=0.13025,
    )
    for m in (unet, text_encoder, text_encoder_2, vae):
        m.eval()
    pipe = LEditsPPPipelineStableDiffusionXL(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=make_scheduler(scheduler),
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------
# Captured data
# --------------------------------------------------------------------------------------------


def _c(x):
    """Detached CPU clone of a tensor (or None)."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").clone()
    return x


@dataclass
class InversionStep:
    """One iteration of diffusers' ``invert()`` loop (high t -> low t).

    t               timestep (int).
    idx             diffusers' ``idx = num_inversion_steps - t_to_idx[t] - 1``: index into xts/zs
                    *before* the final ``zs.flip(0)``; xt = xts[idx+1], target = xts[idx].
    unet_calls      list of dicts {sample, timestep, encoder_hidden_states, added_cond_kwargs,
                    noise_pred} for every UNet call of this step (SD: 1 call; 2 when a non-empty
                    source prompt is given: first with what diffusers calls ``uncond_embedding``,
                    then with ``text_embeddings``; XL: one batched call of 2 with a source prompt).
    noise_pred      the (possibly source-guided) eps passed to ``compute_noise``.
    xt              sample at t (VP space, what the UNet saw).
    xtm1_target     xts[idx] as it was when compute_noise ran (independent add_noise draw, or x0
                    for the last step).
    z               noise returned by compute_noise (what ends up in pipe.zs); for the last step
                    diffusers returns ``tensor([0.])`` (shape (1,)) and stores zeros.
    xtm1_corrected  mu + c*z written back into xts[idx]. For DPM's last step this is +-inf (see NOTES).
    sched           scheduler state as in ``EditStep.sched``; for DPM, order_used follows
                    compute_noise's rule (2 whenever lower_order_nums >= 1, no lower_order_final).
    """

    t: int
    idx: int
    unet_calls: list[dict[str, torch.Tensor]]
    noise_pred: torch.Tensor
    xt: torch.Tensor
    xtm1_target: torch.Tensor
    z: torch.Tensor
    xtm1_corrected: torch.Tensor
    sched: dict[str, Any]


@dataclass
class InversionCapture:
    """What ``pipe.invert()`` computed.

    x0                (B,C,h,w) latent diffusers inverted: ``vae.config.scaling_factor *
                      vae.encode(img).latent_dist.mode()``, or the latent given to the harness.
    timesteps         (n,) ``pipe.inversion_steps``: the last n of the schedule, descending.
    schedule_timesteps full schedule (int(n*(1+skip)) entries) after ``set_timesteps``.
    noise_draws       (n,B,C,h,w) the ``randn_tensor`` draws, in draw order: diffusers draws for
                      ``reversed(timesteps)``, i.e. noise_draws[0] is for the *lowest* t.
    xts_noised        (n+1,B,C,h,w) diffusers' ``xts`` before the loop: xts[0]=x0, xts[k] =
                      add_noise(x0, draw, t) for t = timesteps[n-k] (xts[n] = noisiest).
    xts_corrected     (n+1,B,C,h,w) ``xts`` after the loop (each xts[idx] replaced by mu + c*z).
    zs                (n,B,C,h,w) ``pipe.zs`` (after ``flip(0)``): zs[k] is used at the editing step
                      whose timestep is timesteps[k]. zs[-1] (last step) is all zeros.
    init_latents      (B,C,h,w) ``pipe.init_latents`` = xts[-1] = xts_noised[n] (never corrected).
                      XL: the last ``num_zero_noise_steps`` (default 3) rows of zs are zeroed.
    uncond_embedding / text_embeddings  the first two values ``invert`` unpacks from
                      ``encode_prompt``, under diffusers' names. SD: (edit embeds of the source
                      prompt, negative embeds) — swapped, see NOTES — and uncond_embedding is None
                      when source_guidance_scale <= 1. XL: (negative, source prompt or None).
    steps             list of InversionStep, in loop order.
    alphas_cumprod    (1000,) the scheduler's alphas_cumprod.
    sigmas            DPM only: scheduler.sigmas (k-diffusion sigmas of the schedule + final 0).
    """

    x0: torch.Tensor
    timesteps: torch.Tensor
    schedule_timesteps: torch.Tensor
    noise_draws: torch.Tensor
    xts_noised: torch.Tensor
    xts_corrected: torch.Tensor
    zs: torch.Tensor
    init_latents: torch.Tensor
    uncond_embedding: torch.Tensor | None
    text_embeddings: torch.Tensor | None
    steps: list[InversionStep]
    alphas_cumprod: torch.Tensor
    sigmas: torch.Tensor | None


@dataclass
class EditStep:
    """One iteration i of the editing loop of ``pipe.__call__``.

    Per-concept fields are lists of length N with None where diffusers computed nothing for that
    concept at this step (concept inactive: warmup/cooldown; M2 fields at t > 800 in intersect
    mode; attention fields without cross-attention masks).

    t, zs_index        timestep and ``t_to_idx[t]`` (the zs row used).
    latent_model_input (B*(1+N),C,h,w) UNet input: ``cat([latents]*(1+N))`` (chunk-major: rows
                       [c*B:(c+1)*B] are chunk c; chunk 0 = unconditional).
    encoder_hidden_states (B*(1+N),K,D) ``cat([uncond (B), concept0 (B), concept1 (B), ...])``.
    added_cond_kwargs  XL only: {"text_embeds": pooled (1+N, P), "time_ids": (1+N, 6)} as passed.
    unet_output        (B*(1+N),C,h,w) raw UNet eps.
    noise_pred_uncond  (B,C,h,w) = unet_output.chunk(1+N)[0]        (view of unet_output)
    noise_pred_concepts (N,B,C,h,w) = stack(unet_output.chunk(1+N)[1:]) (view of unet_output)

    Attention (only with use_cross_attn_mask / use_intersect_mask):
    attn_probs         {layer_name: (1+N, B, heads, Nq, K)} softmax probabilities every LEDITS
                       cross-attention processor computed this step, reshaped (view only) from
                       diffusers' (B*(1+N)*heads, Nq, K) layout (batch-major, heads inner).
                       Layers whose Nq exceeds the store's max_size are included too (they were
                       computed but not stored); see ``attn_stored_layers``.
    attn_store         {"down_cross"/"up_cross"/...: [tensor, ...]} exactly what diffusers'
                       ``LeditsAttentionStore.step_store`` held at the end of the step (raw maps of
                       this step only, not averaged: the maps M1 used).  Each tensor is
                       (B, (1+N)*heads - heads, Nq, K); for B=1 that is (1, N*heads, Nq, K),
                       concept-major, heads inner.  For B>1 slot j holds the rows r = j (mod B)
                       of the (chunk, image, head)-flattened batch, i.e. NOT image j (see NOTES).
    attn_store_layers  {key: [layer_name, ...]} which layer produced each attn_store entry.
    attn_aggregated    per concept: ``aggregate_attention(...)`` output (B', rh, rw, K) where B' is
                       the store's batch_size (= B), averaged over heads and the selected layers.
    attn_select        per concept: the ``select`` index diffusers passed (prompt's first index).
    attn_token_sum     per concept: (B, rh, rw) ``sum(out[..., 1:1+num_edit_tokens[c]], -1)``
                       (recorded as the input of F.pad).
    attn_padded        per concept: (B,1,rh+2,rw+2) reflect-padded map.
    smoothed           per concept: (B,1,rh,rw) ``LeditsGaussianSmoothing`` output.
    m1_threshold       per concept: (B,) torch.quantile(smoothed.flatten(1), threshold, dim=1).
    m1                 per concept: (B,rh,rw) binary M1 at attention resolution.
    m1_upsampled       per concept: (B,C,h,w) M1 nearest-upsampled to latent size, repeated over
                       channels (what ``activation_mask`` gets first).
    m2_score           per concept: (B,C,h,w) sum_channels |psi_c| repeated over channels
                       (psi_c = scaled, direction-applied, user-masked concept guidance).
    m2_threshold       per concept: (B,C) quantile of m2_score over h*w per (image, channel).
    m2                 per concept: (B,C,h,w) binary M2 (before intersecting with M1).
    mask_used          per concept: (B,C,h,w) the mask diffusers multiplied psi_c with:
                       intersect & t<=800: m2*m1_upsampled (recorded product); intersect & t>800 or
                       cross-attn only: m1_upsampled; noise only: m2 (diffusers uses torch.where).
    activation_mask    (N,B,C,h,w) ``pipe.activation_mask[i]`` after the run (zeros for inactive
                       concepts).
    sem_guidance       (B,C,h,w) ``pipe.sem_guidance[i]`` = sum_c psi_c*mask_c.
    guided_noise_pred  (B,C,h,w) ``noise_pred`` passed to ``scheduler.step`` (= uncond + sem_guidance).
    variance_noise     (B,C,h,w) ``zs[zs_index]`` passed as ``variance_noise``.
    sample_in          (B,C,h,w) ``latents`` passed to ``scheduler.step`` (VP space).
    prev_sample        (B,C,h,w) its ``prev_sample``.
    x0_pred            DDIM: ``pred_original_sample``; DPM: ``model_outputs[-1]`` after the step
                       (= data prediction used by the solver).
    sched              scheduler state needed to reproduce the step (plain floats/ints/tensors):
        DPM:  num_inference_steps (total schedule length T), timesteps, sigmas (k-diffusion sigmas
              of the schedule + final 0), step_index (before the call; None at the first call),
              lower_order_nums (before), model_outputs (before: [older, previous x0 prediction]),
              step_index_used, order_used (1 or 2), lower_order_final, sigma / sigma_next /
              sigma_last (k-diffusion sigma of this, the target and the previous step),
              abar (alphas_cumprod[t]), abar_via_sigma (1/(1+sigma^2), float32 path), abar_next
              (1/(1+sigma_next^2); 1.0 at the final sigma 0), prev_timestep (target timestep,
              diffusers' name; None for the last), x0_history_in (= model_outputs[-1] before).
        DDIM: num_inference_steps, timesteps, prev_timestep (= t - 1000//T), abar, abar_next
              (alphas_cumprod[prev_timestep] or final_alpha_cumprod), final_alpha_cumprod,
              variance (_get_variance), eta (1.0), std_dev_t (= eta*sqrt(variance)).
    """

    i: int
    t: int
    zs_index: int | None = None
    latent_model_input: torch.Tensor | None = None
    encoder_hidden_states: torch.Tensor | None = None
    added_cond_kwargs: dict[str, torch.Tensor] = field(default_factory=dict)
    unet_output: torch.Tensor | None = None
    noise_pred_uncond: torch.Tensor | None = None
    noise_pred_concepts: torch.Tensor | None = None
    attn_probs: dict[str, torch.Tensor] = field(default_factory=dict)
    attn_stored_layers: list[str] = field(default_factory=list)
    attn_store: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    attn_store_layers: dict[str, list[str]] = field(default_factory=dict)
    attn_aggregated: list[torch.Tensor | None] = field(default_factory=list)
    attn_select: list[int | None] = field(default_factory=list)
    attn_token_sum: list[torch.Tensor | None] = field(default_factory=list)
    attn_padded: list[torch.Tensor | None] = field(default_factory=list)
    smoothed: list[torch.Tensor | None] = field(default_factory=list)
    m1_threshold: list[torch.Tensor | None] = field(default_factory=list)
    m1: list[torch.Tensor | None] = field(default_factory=list)
    m1_upsampled: list[torch.Tensor | None] = field(default_factory=list)
    m2_score: list[torch.Tensor | None] = field(default_factory=list)
    m2_threshold: list[torch.Tensor | None] = field(default_factory=list)
    m2: list[torch.Tensor | None] = field(default_factory=list)
    mask_used: list[torch.Tensor | None] = field(default_factory=list)
    activation_mask: torch.Tensor | None = None
    sem_guidance: torch.Tensor | None = None
    guided_noise_pred: torch.Tensor | None = None
    variance_noise: torch.Tensor | None = None
    sample_in: torch.Tensor | None = None
    prev_sample: torch.Tensor | None = None
    x0_pred: torch.Tensor | None = None
    sched: dict[str, Any] = field(default_factory=dict)
    _events: list[tuple[str, dict]] = field(default_factory=list, repr=False)


@dataclass
class LeditsCapture:
    """Everything captured from one ``invert()`` + ``__call__()`` run.

    config             the arguments of the run (plain values).
    scheduler          "dpmsolver" or "ddim";  pipeline  "sd" or "sdxl".
    inversion          InversionCapture.
    steps              list of EditStep, one per editing step (len = num_inversion_steps).
    editing_prompts    the concept prompts (N).
    active             (n_steps, N) bool: concept c got guidance at step i (warmup/cooldown).
    num_edit_tokens    (N,) what diffusers' encode_prompt returned (``length - 2``); see NOTES:
                       with transformers 5 tokenizers this is 75 for every prompt.
    num_edit_tokens_real (N,) number of real prompt tokens (attention_mask.sum - 2).
    num_edit_tokens_used (N,) what the run used (= num_edit_tokens unless edit_tokens="real").
    edit_token_ids     (N,K) token ids of each concept prompt.
    uncond_embeddings  (B,K,D) and edit_embeddings (N*B,K,D) from encode_prompt of ``__call__``
                       (XL: zeros for the uncond with force_zeros_for_empty_prompt; edit (N,K,D));
    uncond_pooled / edit_pooled  XL only: pooled text_encoder_2 embeddings (uncond zeros).
    att_res            (rh, rw) = (h//4, w//4).
    store_max_size     the store's max_size ((h/4)*(w/4), a float).
    heads              {layer_name: heads} of the LEDITS cross-attention layers.
    activation_mask    (n_steps,N,B,C,h,w) ``pipe.activation_mask``; sem_guidance likewise.
    final_latents      (B,C,h,w) output latents (``output_type="latent"``).
    averaged_store     ``attention_store.attention_store`` at the end (only filled for steps in
                       attn_store_steps, summed; divide by cur_step for diffusers' average);
    averaged_store_steps ``attention_store.cur_step``.
    """

    config: dict[str, Any]
    scheduler: str
    pipeline: str
    inversion: InversionCapture
    steps: list[EditStep]
    editing_prompts: list[str]
    active: torch.Tensor
    num_edit_tokens: torch.Tensor | None
    num_edit_tokens_real: torch.Tensor | None
    num_edit_tokens_used: torch.Tensor | None
    edit_token_ids: torch.Tensor | None
    uncond_embeddings: torch.Tensor
    edit_embeddings: torch.Tensor | None
    uncond_pooled: torch.Tensor | None
    edit_pooled: torch.Tensor | None
    att_res: tuple[int, int] | None
    store_max_size: float | None
    heads: dict[str, int]
    activation_mask: torch.Tensor | None
    sem_guidance: torch.Tensor | None
    final_latents: torch.Tensor
    averaged_store: Any = None
    averaged_store_steps: int = 0


# --------------------------------------------------------------------------------------------
# Recording machinery
# --------------------------------------------------------------------------------------------


def _module_for(pipe):
    """The diffusers module whose globals the pipeline's code uses."""
    return _xl_mod if isinstance(pipe, LEditsPPPipelineStableDiffusionXL) else _sd_mod


class _Recorder:
    def __init__(self, pipe):
        self.pipe = pipe
        self.phase = "idle"
        self.layer = None  # name of the attn2 module currently running
        self.inv_unet_calls: list[dict] = []
        self.inv_steps: list[InversionStep] = []
        self.add_noise_calls: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        self.encode_prompt_calls: list[dict] = []
        self.x0 = None
        self.steps: list[EditStep] = []
        self.store = None

    @property
    def cur(self) -> EditStep | None:
        return self.steps[-1] if (self.phase == "edit" and self.steps) else None

    def event(self, kind, **payload):
        if self.cur is not None:
            self.cur._events.append((kind, {k: _c(v) for k, v in payload.items()}))


class _Proxy:
    """Module stand-in delegating to a real module, with some functions wrapped."""

    def __init__(self, real, overrides):
        self._real = real
        self._overrides = overrides

    def __getattr__(self, name):
        o = self.__dict__["_overrides"]
        if name in o:
            return o[name]
        return getattr(self.__dict__["_real"], name)


def _sched_state(sched) -> dict[str, Any]:
    st: dict[str, Any] = {"num_inference_steps": sched.num_inference_steps, "timesteps": _c(sched.timesteps)}
    if isinstance(sched, DPMSolverMultistepScheduler):
        st.update(
            step_index=sched.step_index,
            lower_order_nums=sched.lower_order_nums,
            model_outputs=[_c(m) for m in sched.model_outputs],
            sigmas=_c(sched.sigmas),
        )
    return st


def _complete_dpm_state(st: dict, sched, t: int) -> None:
    """Fill in the quantities of the DPM step just taken (step_index = the one used)."""
    k = sched.step_index - 1
    sig = sched.sigmas
    n = len(sched.timesteps)
    lower_order_final = k == n - 1 and (
        sched.config.euler_at_final
        or (sched.config.lower_order_final and n < 15)
        or sched.config.final_sigmas_type == "zero"
    )
    order = 1 if (st["lower_order_nums"] < 1 or lower_order_final) else 2
    st.update(
        step_index_used=k,
        order_used=order,
        lower_order_final=lower_order_final,
        sigma=float(sig[k]),
        sigma_next=float(sig[k + 1]),
        sigma_last=float(sig[k - 1]) if k > 0 else None,
        abar=float(sched.alphas_cumprod[t]),
        abar_via_sigma=float(abar_from_sigma(sig[k])),
        abar_next=float(abar_from_sigma(sig[k + 1])),
        prev_timestep=int(sched.timesteps[k + 1]) if k + 1 < n else None,
        x0_history_in=st["model_outputs"][-1],  # previous step's data prediction (None at first)
    )


def _ddim_state(sched, t: int, eta: float) -> dict[str, Any]:
    prev_t = t - sched.config.num_train_timesteps // sched.num_inference_steps
    abar = sched.alphas_cumprod[t]
    abar_next = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod
    var = sched._get_variance(t, prev_t)
    return dict(
        num_inference_steps=sched.num_inference_steps,
        timesteps=_c(sched.timesteps),
        prev_timestep=int(prev_t),
        abar=float(abar),
        abar_next=float(abar_next),
        final_alpha_cumprod=float(sched.final_alpha_cumprod),
        variance=float(var),
        eta=eta,
        std_dev_t=float(eta * var**0.5),
    )


def _make_store_cls(rec: _Recorder, mod):
    base = mod.LeditsAttentionStore

    class RecordingStore(base):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            rec.store = self
            self._layers = {k2: [] for k2 in self.get_empty_store()}

        def __call__(self, attn, is_cross, place_in_unet, editing_prompts, PnP=False):
            cur = rec.cur
            key = f"{place_in_unet}_{'cross' if is_cross else 'self'}"
            before = len(self.step_store[key])
            super().__call__(attn, is_cross, place_in_unet, editing_prompts, PnP)
            stored = len(self.step_store[key]) > before
            if stored:
                self._layers[key].append(rec.layer)
            if cur is not None:
                n_chunks = 1 + int(PnP) + editing_prompts
                bsz = rec.pipe.batch_size
                heads = attn.shape[0] // (n_chunks * bsz)
                cur.attn_probs[rec.layer] = _c(attn).reshape(n_chunks, bsz, heads, *attn.shape[1:])
                if stored:
                    cur.attn_stored_layers.append(rec.layer)

        def aggregate_attention(self, attention_maps, prompts, res, from_where, is_cross, select):
            out = super().aggregate_attention(attention_maps, prompts, res, from_where, is_cross, select)
            rec.event("aggregate", out=out, select=select)
            return out

        def between_steps(self, store_step=True):
            cur = rec.cur
            if cur is not None:
                cur.attn_store = {k2: [_c(x) for x in v] for k2, v in self.step_store.items()}
                cur.attn_store_layers = {k2: list(v) for k2, v in self._layers.items()}
            self._layers = {k2: [] for k2 in self.get_empty_store()}
            super().between_steps(store_step)

    return RecordingStore


def _make_smoothing_cls(rec: _Recorder, mod):
    base = mod.LeditsGaussianSmoothing

    class RecordingSmoothing(base):
        def __call__(self, input):
            out = super().__call__(input)
            rec.event("smooth", inp=input, out=out)
            return out

    return RecordingSmoothing


@contextlib.contextmanager
def _recording(pipe, rec: _Recorder, edit_tokens: str):
    mod = _module_for(pipe)
    xl = mod is _xl_mod
    F_real = mod.F
    torch_real = mod.torch
    saved = {
        name: getattr(mod, name)
        for name in ("F", "torch", "LeditsAttentionStore", "LeditsGaussianSmoothing", "compute_noise")
    }

    def pad(x, *a, **k):
        out = F_real.pad(x, *a, **k)
        rec.event("pad", inp=x, out=out)
        return out

    def interpolate(x, *a, **k):
        out = F_real.interpolate(x, *a, **k)
        rec.event("interpolate", inp=x, out=out)
        return out

    def quantile(x, q, *a, **k):
        out = torch_real.quantile(x, q, *a, **k)
        rec.event("quantile", inp=x, out=out, q=float(q))
        return out

    def where(cond, *a, **k):
        out = torch_real.where(cond, *a, **k)
        rec.event("where", out=out)
        return out

    orig_compute_noise = saved["compute_noise"]

    def compute_noise(scheduler, prev_latents, latents, timestep, noise_pred, eta):
        st = _sched_state(scheduler) if isinstance(scheduler, DPMSolverMultistepScheduler) else {}
        target = _c(prev_latents)
        z, corrected = orig_compute_noise(scheduler, prev_latents, latents, timestep, noise_pred, eta)
        n = len(pipe.inversion_steps)
        t = int(timestep)
        idx = n - [int(v) for v in pipe.inversion_steps].index(t) - 1
        if isinstance(scheduler, DDIMScheduler):
            st = _ddim_state(scheduler, t, eta)
        else:
            _complete_dpm_state(st, scheduler, t)
            # compute_noise_sde_dpm_pp_2nd has no lower_order_final logic: 2nd order whenever
            # lower_order_nums >= 1, also for the last step to sigma 0 (-> inf, see NOTES).
            st["order_used"] = 1 if st["lower_order_nums"] < 1 else 2
            st["lower_order_final"] = False
        rec.inv_steps.append(
            InversionStep(
                t=t,
                idx=idx,
                unet_calls=rec.inv_unet_calls,
                noise_pred=_c(noise_pred),
                xt=_c(latents),
                xtm1_target=target,
                z=_c(z),
                xtm1_corrected=_c(corrected),
                sched=st,
            )
        )
        rec.inv_unet_calls = []
        return z, corrected

    # --- instance-level wrappers -----------------------------------------------------------
    sched = pipe.scheduler
    orig_step = sched.step
    orig_add_noise = sched.add_noise
    orig_encode_prompt = pipe.encode_prompt

    # functools.wraps keeps inspect.signature(step) == the original's: the pipeline decides
    # whether to pass eta/generator by inspecting it (prepare_extra_step_kwargs).
    @functools.wraps(orig_step)
    def step(model_output, timestep, sample, *a, **k):
        cur = rec.cur
        t = int(timestep)
        if isinstance(sched, DPMSolverMultistepScheduler):
            st = _sched_state(sched)
        else:
            st = _ddim_state(sched, t, k.get("eta", 0.0))
        res = orig_step(model_output, timestep, sample, *a, **k)
        if cur is not None:
            if isinstance(sched, DPMSolverMultistepScheduler):
                _complete_dpm_state(st, sched, t)
                cur.x0_pred = _c(sched.model_outputs[-1])
            else:
                cur.x0_pred = _c(res.pred_original_sample if k.get("return_dict", True) else res[1])
            cur.sched = st
            cur.guided_noise_pred = _c(model_output)
            cur.variance_noise = _c(k.get("variance_noise"))
            cur.sample_in = _c(sample)
            cur.prev_sample = _c(res.prev_sample if k.get("return_dict", True) else res[0])
        return res

    @functools.wraps(orig_add_noise)
    def add_noise(original_samples, noise, timesteps):
        if isinstance(sched, DDIMScheduler) and torch.is_floating_point(timesteps):
            # diffusers bug: invert() passes torch.Tensor([t]) (float32) and DDIMScheduler.add_noise
            # indexes alphas_cumprod with it -> IndexError. The values are integral: cast (see NOTES).
            timesteps = timesteps.long()
        out = orig_add_noise(original_samples, noise, timesteps)
        rec.add_noise_calls.append((_c(noise), _c(out), int(timesteps.flatten()[0])))
        if rec.x0 is None:
            rec.x0 = _c(original_samples)
        return out

    @functools.wraps(orig_encode_prompt)
    def encode_prompt(*a, **k):
        outs = list(orig_encode_prompt(*a, **k))
        # SD returns (edit_embeds, negative_embeds, num_edit_tokens);
        # XL returns (negative_embeds, edit_embeds, negative_pooled, edit_pooled, num_edit_tokens).
        if xl:
            neg, edit, neg_pooled, edit_pooled = outs[:4]
        else:
            edit, neg = outs[:2]
            neg_pooled = edit_pooled = None
        net = outs[-1]
        call = dict(
            phase=rec.phase,
            outs=[_c(o) for o in outs],
            edit=_c(edit),
            neg=_c(neg),
            neg_pooled=_c(neg_pooled),
            edit_pooled=_c(edit_pooled),
            num_edit_tokens=_c(net) if isinstance(net, torch.Tensor) else None,
        )
        prompts = k.get("editing_prompt")
        if isinstance(net, torch.Tensor) and prompts is not None:
            if isinstance(prompts, str):
                prompts = [prompts]
            # SD tokenizes each prompt repeated batch_size times; XL tokenizes the list as is, and
            # its num_edit_tokens comes from the last tokenizer of its loop (tokenizer_2).
            texts = list(prompts) if xl else [x for p in prompts for x in [p] * pipe.batch_size]
            tokenizer = pipe.tokenizer_2 if xl else pipe.tokenizer
            tok = tokenizer(
                texts, padding="max_length", max_length=neg.shape[1], truncation=True, return_tensors="pt"
            )
            real = tok.attention_mask.sum(-1) - 2
            call.update(num_edit_tokens_real=real, token_ids=tok.input_ids)
            if edit_tokens == "real" and rec.phase == "edit":
                outs[-1] = real
        call["num_edit_tokens_used"] = _c(outs[-1]) if isinstance(outs[-1], torch.Tensor) else None
        rec.encode_prompt_calls.append(call)
        return tuple(outs)

    # --- hooks -------------------------------------------------------------------------------
    handles = []

    def unet_hook(module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        out = output.sample if hasattr(output, "sample") else output[0]
        added = {key: _c(v) for key, v in (kwargs.get("added_cond_kwargs") or {}).items()}
        if rec.phase == "invert":
            rec.inv_unet_calls.append(
                dict(
                    sample=_c(sample),
                    timestep=int(t),
                    encoder_hidden_states=_c(ehs),
                    added_cond_kwargs=added,
                    noise_pred=_c(out),
                )
            )
        elif rec.phase == "edit":
            cur = rec.cur
            cur.t = int(t)
            cur.latent_model_input = _c(sample)
            cur.encoder_hidden_states = _c(ehs)
            cur.added_cond_kwargs = added
            cur.unet_output = _c(out)

    def unet_pre_hook(module, args, kwargs):
        if rec.phase == "edit":
            rec.steps.append(EditStep(i=len(rec.steps), t=-1))

    handles.append(pipe.unet.register_forward_pre_hook(unet_pre_hook, with_kwargs=True))
    handles.append(pipe.unet.register_forward_hook(unet_hook, with_kwargs=True))
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn2"):

            def pre(_module, args, _name=name):
                rec.layer = _name

            handles.append(module.register_forward_pre_hook(pre))

    try:
        mod.F = _Proxy(F_real, {"pad": pad, "interpolate": interpolate})
        mod.torch = _Proxy(torch_real, {"quantile": quantile, "where": where})
        mod.LeditsAttentionStore = _make_store_cls(rec, mod)
        mod.LeditsGaussianSmoothing = _make_smoothing_cls(rec, mod)
        mod.compute_noise = compute_noise
        sched.step = step
        sched.add_noise = add_noise
        pipe.encode_prompt = encode_prompt
        yield
    finally:
        for name, val in saved.items():
            setattr(mod, name, val)
        for h in handles:
            h.remove()
        for obj, attr in ((sched, "step"), (sched, "add_noise"), (pipe, "encode_prompt")):
            obj.__dict__.pop(attr, None)


def _active(i: int, c: int, warmup, cooldown) -> bool:
    w = warmup[c] if isinstance(warmup, list) else warmup
    if i < w:
        return False
    if isinstance(cooldown, list):
        cd = cooldown[c]
    elif cooldown is None:
        cd = i + 1
    else:
        cd = cooldown
    return i < cd


def _parse_events(step: EditStep, n_concepts: int, active: list[bool], cross: bool, intersect: bool):
    for name in (
        "attn_aggregated",
        "attn_select",
        "attn_token_sum",
        "attn_padded",
        "smoothed",
        "m1_threshold",
        "m1",
        "m1_upsampled",
        "m2_score",
        "m2_threshold",
        "m2",
        "mask_used",
    ):
        setattr(step, name, [None] * n_concepts)
    start = "aggregate" if cross else "quantile"
    groups: list[list[tuple[str, dict]]] = []
    for ev in step._events:
        if ev[0] == start:
            groups.append([])
        if not groups:
            raise RuntimeError(f"unexpected event {ev[0]} before a concept started at step {step.i}")
        groups[-1].append(ev)
    concepts = [c for c in range(n_concepts) if active[c]]
    if len(groups) != len(concepts):
        raise RuntimeError(f"step {step.i}: {len(groups)} event groups for {len(concepts)} active concepts")
    for c, g in zip(concepts, groups, strict=True):
        kinds = [k for k, _ in g]
        ev = [p for _, p in g]
        if cross:
            expect = ["aggregate", "pad", "smooth", "quantile", "where", "interpolate"]
            if kinds[:6] != expect:
                raise RuntimeError(f"step {step.i}: unexpected event order {kinds}")
            agg, pad, smooth, q1, w1, up = ev[:6]
            step.attn_aggregated[c] = agg["out"]
            step.attn_select[c] = agg["select"]
            step.attn_token_sum[c] = pad["inp"].squeeze(1)
            step.attn_padded[c] = pad["out"]
            step.smoothed[c] = smooth["out"]
            step.m1_threshold[c] = q1["out"]
            step.m1[c] = w1["out"]
            step.m1_upsampled[c] = up["out"].repeat(1, step.unet_output.shape[1], 1, 1)
            rest = kinds[6:]
            if rest == ["quantile", "where"]:
                q2, w2 = ev[6:]
                step.m2_score[c] = q2["inp"].reshape(step.m1_upsampled[c].shape)
                step.m2_threshold[c] = q2["out"]
                step.m2[c] = w2["out"]
                step.mask_used[c] = w2["out"] * step.m1_upsampled[c]
            elif rest == []:
                step.mask_used[c] = step.m1_upsampled[c]
            else:
                raise RuntimeError(f"step {step.i}: unexpected event order {kinds}")
        else:
            if kinds != ["quantile", "where", "where"]:
                raise RuntimeError(f"step {step.i}: unexpected event order {kinds}")
            q2, w2, _ = ev
            shape = step.noise_pred_uncond.shape
            step.m2_score[c] = q2["inp"].reshape(shape)
            step.m2_threshold[c] = q2["out"]
            step.m2[c] = w2["out"]
            step.mask_used[c] = w2["out"]
    step._events = []


# --------------------------------------------------------------------------------------------
# The capture run
# --------------------------------------------------------------------------------------------


def capture_ledits_run(
    pipe: LEditsPPPipelineStableDiffusion,
    image_or_latent,
    editing_prompts: list[str] | str | None,
    edit_guidance_scale: float | list[float] = 5.0,
    edit_threshold: float | list[float] = 0.9,
    reverse_editing_direction: bool | list[bool] = False,
    num_inversion_steps: int = 5,
    skip: float = 0.15,
    seed: int = 0,
    use_cross_attn_mask: bool = False,
    use_intersect_mask: bool = True,
    *,
    edit_warmup_steps: int | list[int] = 0,
    edit_cooldown_steps: int | list[int] | None = None,
    user_mask: torch.Tensor | None = None,
    source_prompt: str = "",
    source_guidance_scale: float = 3.5,
    edit_tokens: str = "diffusers",
    attn_store_steps: list[int] | None = None,
    store_averaged_over_steps: bool = True,
    invert_kwargs: dict[str, Any] | None = None,
    call_kwargs: dict[str, Any] | None = None,
) -> LeditsCapture:
    """Run ``pipe.invert(...)`` then ``pipe(...)`` and capture diffusers' intermediate values.

    image_or_latent  either an image accepted by ``invert`` (PIL, or float tensor (B,3,H,W) in
                     [0,1]; H,W multiples of 32) or a latent tensor (B,4,h,w) that is used as x0
                     directly (already multiplied by the VAE scaling factor; ``encode_image`` is
                     bypassed, so the 32-multiple check is too).
    seed             ``torch.Generator().manual_seed(seed)`` for ``invert`` (the add_noise draws).
    edit_tokens      "diffusers": use diffusers' num_edit_tokens as it computes it (see NOTES:
                     75 for every prompt with transformers 5);  "real": replace it by the real
                     token count (attention_mask.sum - 2), i.e. M1 sums only the prompt's tokens
                     (transformers-4 behaviour, and what the paper/DESIGN intend).
    invert_kwargs / call_kwargs  extra keyword arguments for ``invert`` / ``__call__`` (e.g. XL's
                     ``num_zero_noise_steps``).
    Other arguments are passed to diffusers unchanged (names as in diffusers).
    ``output_type="latent"`` is used, so ``final_latents`` is the raw latent result.
    Works with ``LEditsPPPipelineStableDiffusion`` and ``LEditsPPPipelineStableDiffusionXL``.
    """
    if isinstance(editing_prompts, str):
        editing_prompts = [editing_prompts]
    editing_prompts = list(editing_prompts or [])
    if edit_tokens not in ("diffusers", "real"):
        raise ValueError("edit_tokens must be 'diffusers' or 'real'")
    kind = "ddim" if isinstance(pipe.scheduler, DDIMScheduler) else "dpmsolver"
    rec = _Recorder(pipe)
    latent_input = (
        isinstance(image_or_latent, torch.Tensor)
        and image_or_latent.ndim == 4
        and image_or_latent.shape[1] == pipe.unet.config.in_channels
    )
    gen = torch.Generator(device="cpu").manual_seed(seed)
    N = len(editing_prompts)

    with _recording(pipe, rec, edit_tokens), contextlib.ExitStack() as stack:
        if latent_input:
            lat = image_or_latent

            def encode_image(image, dtype=None, **_):
                return lat.to(device=pipe.device, dtype=dtype), None

            pipe.encode_image = encode_image
            stack.callback(lambda: pipe.__dict__.pop("encode_image", None))
        rec.phase = "invert"
        pipe.invert(
            image=image_or_latent,
            source_prompt=source_prompt,
            source_guidance_scale=source_guidance_scale,
            num_inversion_steps=num_inversion_steps,
            skip=skip,
            generator=gen,
            **(invert_kwargs or {}),
        )
        inv_sched_timesteps = _c(pipe.scheduler.timesteps)
        rec.phase = "edit"
        out = pipe(
            editing_prompt=editing_prompts or None,
            edit_guidance_scale=edit_guidance_scale,
            edit_threshold=edit_threshold,
            reverse_editing_direction=reverse_editing_direction,
            edit_warmup_steps=edit_warmup_steps,
            edit_cooldown_steps=edit_cooldown_steps,
            user_mask=user_mask,
            use_cross_attn_mask=use_cross_attn_mask,
            use_intersect_mask=use_intersect_mask,
            attn_store_steps=list(attn_store_steps or []),
            store_averaged_over_steps=store_averaged_over_steps,
            output_type="latent",
            **(call_kwargs or {}),
        )
        rec.phase = "idle"

    # ---- inversion ------------------------------------------------------------------------
    n = num_inversion_steps
    timesteps = _c(pipe.inversion_steps)
    x0 = rec.x0
    draws = torch.stack([a[0] for a in rec.add_noise_calls])
    noised = [None] * n
    for k, (_, xt, t) in enumerate(rec.add_noise_calls):
        idx = n - [int(v) for v in timesteps].index(t) - 1
        assert idx == k, "diffusers draws noise for reversed(timesteps)"
        noised[idx] = xt
    xts_noised = torch.stack([x0] + noised)
    xts_corrected = xts_noised.clone()
    for s in rec.inv_steps:
        xts_corrected[s.idx] = s.xtm1_corrected
    inv_prompt = [c for c in rec.encode_prompt_calls if c["phase"] == "invert"][0]
    inversion = InversionCapture(
        x0=x0,
        timesteps=timesteps,
        schedule_timesteps=inv_sched_timesteps,
        noise_draws=draws,
        xts_noised=xts_noised,
        xts_corrected=xts_corrected,
        zs=_c(pipe.zs),
        init_latents=_c(pipe.init_latents),
        # invert() unpacks encode_prompt's (editing_embeds, negative_embeds, n) as
        # (uncond_embedding, text_embeddings, _): keep diffusers' names, values as it used them.
        uncond_embedding=inv_prompt["outs"][0],
        text_embeddings=inv_prompt["outs"][1],
        steps=rec.inv_steps,
        alphas_cumprod=_c(pipe.scheduler.alphas_cumprod),
        sigmas=_c(pipe.scheduler.sigmas) if kind == "dpmsolver" else None,
    )

    # ---- editing ----------------------------------------------------------------------------
    edit_prompt = [c for c in rec.encode_prompt_calls if c["phase"] == "edit"][0]
    cross = use_cross_attn_mask or use_intersect_mask
    t_to_idx = {int(v): k for k, v in enumerate(timesteps[-pipe.zs.shape[0] :])}
    active = torch.zeros(len(rec.steps), N, dtype=torch.bool)
    for step in rec.steps:
        step.zs_index = t_to_idx[step.t]
        if N:
            chunks = step.unet_output.chunk(1 + N)
            step.noise_pred_uncond = chunks[0]
            step.noise_pred_concepts = torch.stack(chunks[1:])
            act = [_active(step.i, c, edit_warmup_steps, edit_cooldown_steps) for c in range(N)]
            active[step.i] = torch.tensor(act)
            _parse_events(step, N, act, cross, use_intersect_mask)
            step.activation_mask = _c(pipe.activation_mask[step.i])
            step.sem_guidance = _c(pipe.sem_guidance[step.i])
        else:
            step.noise_pred_uncond = step.unet_output

    heads = {}
    for name, mod in pipe.unet.named_modules():
        if name.endswith("attn2") and not name.startswith("mid_block"):
            heads[name] = mod.heads
    lat_hw = inversion.x0.shape[-2:]
    store = rec.store
    return LeditsCapture(
        config=dict(
            editing_prompts=editing_prompts,
            edit_guidance_scale=edit_guidance_scale,
            edit_threshold=edit_threshold,
            reverse_editing_direction=reverse_editing_direction,
            num_inversion_steps=num_inversion_steps,
            skip=skip,
            seed=seed,
            use_cross_attn_mask=use_cross_attn_mask,
            use_intersect_mask=use_intersect_mask,
            edit_warmup_steps=edit_warmup_steps,
            edit_cooldown_steps=edit_cooldown_steps,
            source_prompt=source_prompt,
            source_guidance_scale=source_guidance_scale,
            edit_tokens=edit_tokens,
            latent_input=latent_input,
        ),
        scheduler=kind,
        pipeline="sdxl" if isinstance(pipe, LEditsPPPipelineStableDiffusionXL) else "sd",
        inversion=inversion,
        steps=rec.steps,
        editing_prompts=editing_prompts,
        active=active,
        num_edit_tokens=edit_prompt["num_edit_tokens"],
        num_edit_tokens_real=edit_prompt.get("num_edit_tokens_real"),
        num_edit_tokens_used=edit_prompt["num_edit_tokens_used"],
        edit_token_ids=edit_prompt.get("token_ids"),
        uncond_embeddings=edit_prompt["neg"],
        edit_embeddings=edit_prompt["edit"],
        uncond_pooled=edit_prompt["neg_pooled"],
        edit_pooled=edit_prompt["edit_pooled"],
        att_res=(int(lat_hw[0] / 4), int(lat_hw[1] / 4)) if cross and N else None,
        store_max_size=store.max_size if store is not None else None,
        heads=heads,
        activation_mask=_c(pipe.activation_mask),
        sem_guidance=_c(pipe.sem_guidance),
        final_latents=_c(out.images),
        averaged_store=(
            {k: [_c(x) for x in v] for k, v in store.attention_store.items()}
            if store is not None and isinstance(store.attention_store, dict)
            else (
                [{k: [_c(x) for x in v] for k, v in s.items()} for s in store.attention_store]
                if store
                else None
            )
        ),
        averaged_store_steps=store.cur_step if store is not None else 0,
    )


# --------------------------------------------------------------------------------------------
# Small pieces of diffusers for unit comparisons
# --------------------------------------------------------------------------------------------


def diffusers_gaussian_kernel() -> torch.Tensor:
    """The (1,1,3,3) kernel of diffusers' ``LeditsGaussianSmoothing`` (sigma 0.5, formula
    exp(-((x-mu)/(2 sigma))^2), normalised to sum 1)."""
    return _sd_mod.LeditsGaussianSmoothing("cpu").weight.clone()


def diffusers_gaussian_smoothing(x: torch.Tensor, pad: bool = True) -> torch.Tensor:
    """Smooth attention maps exactly as diffusers' pipeline does.

    x: (B,H,W) token-summed map (or (B,1,H,W)).  pad=True: ``F.pad(x.unsqueeze(1), (1,1,1,1),
    mode="reflect")`` then ``LeditsGaussianSmoothing`` then squeeze -> (B,H,W) (pipeline lines
    ~1052-1053).  pad=False: the bare class call (valid 3x3 conv) on a (B,1,H,W) input."""
    sm = _sd_mod.LeditsGaussianSmoothing(x.device)
    if not pad:
        return sm(x)
    if x.ndim == 4:
        x = x.squeeze(1)
    return sm(torch.nn.functional.pad(x.unsqueeze(1), (1, 1, 1, 1), mode="reflect")).squeeze(1)


def diffusers_schedule(scheduler: str, num_inversion_steps: int, skip: float) -> dict[str, Any]:
    """The schedule diffusers' ``invert()`` builds: ``timestep_spacing="leading"``,
    ``set_timesteps(int(n*(1+skip)))``, keep the last n timesteps.

    Returns dict(num_inference_steps (total), schedule_timesteps, timesteps (kept, descending),
    start_index (index of timesteps[0] in the schedule), alphas_cumprod (1000,),
    abar (n,) alphas_cumprod at each kept t, abar_next (n,) of the step target (DPM: from the next sigma, 1.0
    for the final sigma 0; DDIM: alphas_cumprod[t - 1000//total] or final_alpha_cumprod),
    sigmas (DPM: scheduler.sigmas incl. final 0; DDIM: None), k_sigmas (n+1,) k-diffusion sigmas
    sqrt((1-abar)/abar) of the kept steps followed by the target of the last step)."""
    sched = make_scheduler(scheduler)
    sched.register_to_config(timestep_spacing="leading")
    total = int(num_inversion_steps * (1 + skip))
    sched.set_timesteps(total)
    ts = sched.timesteps[-num_inversion_steps:]
    start = len(sched.timesteps) - num_inversion_steps
    ac = sched.alphas_cumprod
    abar = torch.stack([ac[int(t)] for t in ts])
    if scheduler == "dpmsolver":
        sig = sched.sigmas[start : start + num_inversion_steps + 1]
        abar_next = abar_from_sigma(sig[1:])
        sigmas = sched.sigmas.clone()
    else:
        step = sched.config.num_train_timesteps // sched.num_inference_steps
        abar_next = torch.stack(
            [
                ac[int(t) - step] if int(t) - step >= 0 else torch.as_tensor(sched.final_alpha_cumprod)
                for t in ts
            ]
        )
        sigmas = None
    k_sigmas = torch.cat([sigma_from_abar(abar), sigma_from_abar(abar_next[-1:])])
    return dict(
        num_inference_steps=total,
        schedule_timesteps=sched.timesteps.clone(),
        timesteps=ts.clone(),
        start_index=start,
        alphas_cumprod=ac.clone(),
        abar=abar,
        abar_next=abar_next,
        sigmas=sigmas,
        k_sigmas=k_sigmas,
    )


def diffusers_dpm_sde_step(
    model_output_eps: torch.Tensor,
    sample: torch.Tensor,
    timestep: int,
    variance_noise: torch.Tensor,
    *,
    num_inference_steps: int,
    prev_x0: torch.Tensor | None = None,
    lower_order_nums: int | None = None,
    step_index: int | None = None,
) -> dict[str, Any]:
    """One real ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2)
    .step(eps, t, sample, variance_noise=z)`` from a given state.

    sample is in diffusers' VP space (x_t = sqrt(abar) x0 + sqrt(1-abar) eps).
    num_inference_steps: the *total* schedule length as diffusers sets it (``int(n*(1+skip))``,
    "leading" spacing).  prev_x0: the previous step's data prediction (what the scheduler keeps in
    ``model_outputs[-2]`` for 2nd order); None -> first-order step (lower_order_nums 0).
    step_index defaults to the index of ``timestep`` in the schedule.

    Returns dict(prev_sample, x0_pred (this step's data prediction), order (1/2), step_index,
    sigma, sigma_next, sigma_last (k-diffusion sigmas of this, the next and the previous step),
    abar (alphas_cumprod[t]), abar_next (1/(1+sigma_next^2)), prev_timestep (the next timestep
    in sampling order, diffusers' name; None for the last))."""
    sched = make_scheduler("dpmsolver")
    sched.register_to_config(timestep_spacing="leading")
    sched.set_timesteps(num_inference_steps)
    sched._step_index = sched.index_for_timestep(timestep) if step_index is None else step_index
    sched.model_outputs = [None, prev_x0]  # step() shifts: [-2] becomes the previous x0
    sched.lower_order_nums = (
        (1 if prev_x0 is not None else 0) if lower_order_nums is None else lower_order_nums
    )
    st = _sched_state(sched)
    out = sched.step(model_output_eps, timestep, sample, variance_noise=variance_noise)
    _complete_dpm_state(st, sched, int(timestep))
    return dict(
        prev_sample=out.prev_sample,
        x0_pred=sched.model_outputs[-1],
        order=st["order_used"],
        step_index=st["step_index_used"],
        sigma=st["sigma"],
        sigma_next=st["sigma_next"],
        sigma_last=st["sigma_last"],
        abar=st["abar"],
        abar_next=st["abar_next"],
        prev_timestep=st["prev_timestep"],
    )


def diffusers_ddim_step(
    model_output_eps: torch.Tensor,
    sample: torch.Tensor,
    timestep: int,
    variance_noise: torch.Tensor,
    *,
    num_inference_steps: int,
    eta: float = 1.0,
    set_alpha_to_one: bool = False,
) -> dict[str, Any]:
    """One real ``DDIMScheduler.step(eps, t, sample, eta=eta, variance_noise=z)`` (SD1.5 config,
    "leading" spacing, schedule of ``num_inference_steps`` total steps).

    Returns dict(prev_sample, x0_pred, prev_timestep (= t - 1000//T, diffusers' name for the
    target), abar (alphas_cumprod[t]), abar_next (alphas_cumprod[prev_timestep] or
    final_alpha_cumprod), variance, std_dev_t = eta*sqrt(variance))."""
    sched = make_scheduler("ddim", ddim_set_alpha_to_one=set_alpha_to_one)
    sched.set_timesteps(num_inference_steps)
    st = _ddim_state(sched, int(timestep), eta)
    out = sched.step(model_output_eps, int(timestep), sample, eta=eta, variance_noise=variance_noise)
    return dict(
        prev_sample=out.prev_sample,
        x0_pred=out.pred_original_sample,
        prev_timestep=st["prev_timestep"],
        abar=st["abar"],
        abar_next=st["abar_next"],
        variance=st["variance"],
        std_dev_t=st["std_dev_t"],
    )


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)


def sigma_from_abar(abar) -> torch.Tensor:
    """k-diffusion sigma = sqrt((1-abar)/abar)."""
    abar = _t(abar)
    return ((1 - abar) / abar).sqrt()


def abar_from_sigma(sigma) -> torch.Tensor:
    """abar = 1/(1+sigma^2) (sigma=0 -> 1)."""
    sigma = _t(sigma)
    return 1.0 / (1.0 + sigma**2)


def vp_to_k(x_t: torch.Tensor, abar) -> torch.Tensor:
    """diffusers VP latent x_t = sqrt(abar) x0 + sqrt(1-abar) eps  ->  k-diffusion x = x_t/sqrt(abar)
    = x0 + sigma eps."""
    return x_t / _t(abar).sqrt().to(x_t.dtype)


def k_to_vp(x: torch.Tensor, abar) -> torch.Tensor:
    """Inverse of ``vp_to_k``."""
    return x * _t(abar).sqrt().to(x.dtype)
