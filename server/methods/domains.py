"""The domains of a meta-learning step: simulated sites made by style augmentation, and random
splits of the available domains into two groups."""

from __future__ import annotations

import torch


def style_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random intensity-curve, contrast and noise change per image (a simulated new site)."""
    n = x.shape[0]
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand((n, 1, 1, 1), generator=gen) * (hi - lo) + lo).to(dev)

    gamma = torch.exp(u(-0.6, 0.6))
    y = x.clamp(0, 1) ** gamma
    y = y * u(0.6, 1.4) + u(-0.15, 0.15)
    y = torch.where(u(0, 1) < 0.3, 1.0 - y, y)  # sometimes invert the contrast
    y = y + torch.randn(x.shape, generator=gen).to(dev) * u(0.0, 0.05)
    return y.clamp(0, 1)


def split(n: int, gen: torch.Generator) -> tuple[list[int], list[int]]:
    """A random split of ``n >= 2`` domains into two non-empty groups."""
    perm = torch.randperm(n, generator=gen).tolist()
    cut = int(torch.randint(1, n, (1,), generator=gen))
    return perm[:cut], perm[cut:]
