"""Shared fixtures for the core tests: a small deterministic, non-trivial denoiser."""

import pytest
import torch


class TinyDenoiser(torch.nn.Module):
    """D(x, sigma, cond) = c_skip x + c_out net(c_in x, sigma, cond): a small random conv net (EDM-style)."""

    def __init__(self, channels: int = 4, hidden: int = 16, num_conds: int = 4, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(channels + 1, hidden, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(hidden, channels, 3, padding=1)
        self.cond = torch.nn.Parameter(torch.zeros(num_conds, hidden, 1, 1))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.calls = []

    @torch.no_grad()
    def forward(self, x, sigma: float, cond: int = 0):
        self.calls.append((float(sigma), int(cond), int(x.shape[0])))
        c_in = 1.0 / (sigma**2 + 1) ** 0.5
        c_skip, c_out = 1.0 / (sigma**2 + 1), sigma / (sigma**2 + 1) ** 0.5
        s = torch.full_like(x[:, :1], float(torch.log(torch.tensor(sigma + 1e-3))))
        h = torch.tanh(self.conv1(torch.cat([x * c_in, s], 1)) + self.cond[cond])
        return c_skip * x + c_out * self.conv2(h)


@pytest.fixture
def denoiser():
    return TinyDenoiser()


@pytest.fixture
def latent():
    """A batch of 2 non-square latents (2, 4, 12, 20)."""
    return torch.randn((2, 4, 12, 20), generator=torch.Generator().manual_seed(1))
