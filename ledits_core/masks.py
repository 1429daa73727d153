"""LEDITS++ implicit masks: M2 from the noise estimate, M1 from cross-attention, and their product."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MASK_MODES = ("intersect", "attention", "noise", "none")


def quantile_mask(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per image: 1 where values >= their `threshold` quantile.  values (B, ...) -> float32 mask (B, ...).

    Always computed in float32 (torch.quantile rejects fp16/bf16).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    flat = values.detach().float().flatten(1)
    q = torch.quantile(flat, float(threshold), dim=1, keepdim=True)
    return (flat >= q).float().view(values.shape)


def noise_mask(guidance: torch.Tensor, threshold: float) -> torch.Tensor:
    """M2: |psi| summed over channels, thresholded at its quantile.  (B, C, H, W) -> (B, 1, H, W) float32."""
    return quantile_mask(guidance.detach().float().abs().sum(dim=1, keepdim=True), threshold)


def gaussian_kernel(size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """The 2-D kernel diffusers' LEDITS++ uses: prod_d exp(-((x - mu) / (2 sigma))^2), normalised -> (size, size)."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-((coords / (2 * sigma)) ** 2)) / (sigma * math.sqrt(2 * math.pi))
    kernel = g[:, None] * g[None, :]
    return kernel / kernel.sum()


def gaussian_smooth(maps: torch.Tensor) -> torch.Tensor:
    """Reflect-pad 1, then the 3x3 Gaussian (sigma 0.5).  (B, h, w) -> (B, h, w) float32; h, w >= 2."""
    x = maps.detach().float()[:, None]
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return F.conv2d(x, gaussian_kernel().to(x.device)[None, None])[:, 0]


def attention_mask(attn_map: torch.Tensor, threshold: float, latent_hw: tuple[int, int]) -> torch.Tensor:
    """M1: smooth the token-summed attention map, threshold at its quantile, nearest-upsample.

    attn_map (B, h, w) -> (B, 1, H, W) float32 at the latent size.
    """
    binary = quantile_mask(gaussian_smooth(attn_map), threshold)
    return F.interpolate(binary[:, None], size=tuple(latent_hw), mode="nearest")


def combine_masks(mode: str, attn: torch.Tensor | None, noise: torch.Tensor | None) -> torch.Tensor | None:
    """The mask a concept's guidance is multiplied by for a mask mode; None means no masking."""
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODES)}")
    if mode == "none":
        return None
    if mode == "noise" or (mode == "intersect" and attn is None):
        return noise
    if mode == "attention":
        return attn if attn is not None else noise
    return attn * noise
