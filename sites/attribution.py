"""Which site does a synthetic image come from? A detector trained inside each site.

Each site trains a small CNN to tell its own real train images (positives) from
public images (negatives) and scores any synthetic images it is sent. Across
sites, a synthetic image is attributed to the site whose detector scores it
highest. Only the scores of the synthetic images leave the site.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simulator.devices import to_device, to_host
from simulator.optim import Adam
from simulator.seeding import torch_generator

CPU = torch.device("cpu")


def _detector(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.SiLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.SiLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 16, 1),
    )


def train_detector_and_score(
    real: np.ndarray,
    public: np.ndarray,
    queries: np.ndarray,
    steps: int,
    seed: int,
    size: int = 32,
    batch: int = 32,
    device: torch.device = CPU,
) -> np.ndarray:
    """Train real-vs-public on ``real`` and ``public`` (on ``device``); return sigmoid scores of
    ``queries``."""

    def prep(a: np.ndarray) -> torch.Tensor:
        (t,) = to_device(device, a)
        return F.interpolate(t, size=(size, size), mode="area") if t.shape[-1] != size else t

    pos, neg, q = prep(real), prep(public), prep(queries)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _detector(pos.shape[1]).to(device)
    opt = Adam(model.parameters(), lr=2e-3)
    gen = torch_generator(seed)
    half = batch // 2
    for _ in range(steps):
        ip = torch.randint(len(pos), (half,), generator=gen).to(device)
        ineg = torch.randint(len(neg), (half,), generator=gen).to(device)
        x = torch.cat([pos[ip], neg[ineg]])
        y = torch.cat([torch.ones(half, device=device), torch.zeros(half, device=device)])
        loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return to_host(torch.sigmoid(model(q).squeeze(1))).astype(np.float32)
