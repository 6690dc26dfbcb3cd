"""Fidelity of the replay a site is sent, measured inside the site (only scalars leave).

* TSTR ratio (train on synthetic, test on real): a segmenter trained only on the
  site's replay, tested on the site's real test split, divided by the same segmenter
  trained on the real train split for the same number of steps.
* Intensity distance: the 1-D Wasserstein distance between real and synthetic
  intensity distributions, and the L1 distance between their 32-bin histograms.
"""

from __future__ import annotations

import numpy as np
import torch

from simulator.devices import to_device, to_host
from simulator.optim import Adam
from simulator.seeding import torch_generator
from simulator.segmentation import build_model, dice_per_image, predict, seg_loss

CPU = torch.device("cpu")


def train_segmenter(
    x: np.ndarray,
    y: np.ndarray,
    steps: int,
    seed: int,
    width: int = 8,
    depth: int = 3,
    batch: int = 16,
    device: torch.device = CPU,
) -> torch.nn.Module:
    """The TSTR segmenter trained on (x, y) for ``steps`` steps from ``seed``, on ``device``."""
    model = build_model(x.shape[1], width, depth, seed=seed)
    model = model.to(device=device, memory_format=torch.channels_last)
    opt = Adam(model.parameters(), lr=2e-3)
    gen = torch_generator(seed)
    X, Y = to_device(device, x, y)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(X), (min(batch, len(X)),), generator=gen).to(device)
        loss = seg_loss(model(X[idx]), Y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def _train_and_test(
    x: np.ndarray,
    y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    steps: int,
    seed: int,
    device: torch.device,
) -> float:
    tx, ty = to_device(device, test_x, test_y)
    pred = predict(train_segmenter(x, y, steps, seed, device=device), tx)
    return float(to_host(dice_per_image(pred, ty)).mean())


def tstr(
    real: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    synth: tuple[np.ndarray, np.ndarray],
    steps: int,
    seed: int,
    device: torch.device = CPU,
) -> dict[str, float]:
    """Dice on the real test split after training on synthetic vs real pairs, and their ratio
    (both segmenters trained on ``device``)."""
    d_syn = _train_and_test(*synth, *test, steps=steps, seed=seed, device=device)
    d_real = _train_and_test(*real, *test, steps=steps, seed=seed, device=device)
    return {
        "tstr_dice_synthetic": d_syn,
        "tstr_dice_real": d_real,
        "tstr_ratio": d_syn / d_real if d_real > 0 else float("nan"),
    }


def intensity_distance(real_x: np.ndarray, synth_x: np.ndarray, bins: int = 32) -> dict[str, float]:
    """Wasserstein-1 between intensity distributions and L1 between normalised histograms."""
    a = np.sort(real_x.ravel())
    b = np.sort(synth_x.ravel())
    q = np.linspace(0, 1, 512)
    w1 = float(np.mean(np.abs(np.quantile(a, q) - np.quantile(b, q))))
    ha, _ = np.histogram(a, bins=bins, range=(0, 1))
    hb, _ = np.histogram(b, bins=bins, range=(0, 1))
    l1 = float(np.abs(ha / ha.sum() - hb / hb.sum()).sum())
    return {"intensity_w1": w1, "histogram_l1": l1}
