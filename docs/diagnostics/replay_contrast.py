"""Why a site's replay trains a weak segmenter: organ contrast and train-real/test-synthetic Dice.

For each named phantom site (quick profile, run seed 0): tune its prompt on the cached quick
backbone, sample 32 replay pairs, and print (1) the organ's mean intensity minus that of a
3-pixel ring around it, in real and in synthetic images, and (2) the Dice of a segmenter
trained on the real train split and tested on the synthetic pairs (TRTS). Needs the quick
backbone in the cache (`smg-sim smd pretrain --profile quick`). Usage::

    .venv/bin/python docs/diagnostics/replay_contrast.py charlie alpha delta
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import torch

from server.replay import ReplayBank
from simulator.benchmarks.catalog import SITE_NAMES
from simulator.config import build_config
from simulator.driver.plan import site_spec
from simulator.seeding import derive_seed, torch_generator
from simulator.smd.cache import backbone_path
from simulator.smd.pretrain import smd_spec
from sites.datasets import build_site_data
from sites.fidelity import _train_and_test
from sites.prompt import tune_prompt


def contrast(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    out = []
    for img, m in zip(x[:, 0], y[:, 0], strict=True):
        if m.sum() < 5:
            continue
        ring = cv2.dilate(m, np.ones((7, 7), np.uint8)) - m
        out.append(img[m > 0].mean() - img[ring > 0].mean())
    return float(np.mean(out)), float(np.std(out))


def main(names: list[str]) -> None:
    torch.set_num_threads(2)
    cfg = build_config("quick")
    s = cfg.smd
    bank = ReplayBank(
        str(backbone_path(smd_spec(cfg, 1))), 0, 32, s.sample_steps, cfg.data.image_size, 1
    )
    for name in names:
        d = build_site_data(site_spec(cfg, name, SITE_NAMES.index(name)))
        prompt, _ = tune_prompt(
            bank.backbone,
            d.train_x,
            d.train_y,
            s.prompt_steps,
            s.prompt_lr,
            s.prompt_batch,
            torch_generator(derive_seed(0, "prompt", name)),
            candidates=s.prompt_candidates,
        )
        bank.add_prompt(name, prompt)
        sx, sy = bank.replay(name)
        trts = _train_and_test(d.train_x, d.train_y, sx, sy, s.fidelity_steps, 0)
        print(
            f"{name}: organ-minus-ring contrast real {contrast(d.train_x, d.train_y)[0]:.3f} "
            f"+- {contrast(d.train_x, d.train_y)[1]:.3f}, synthetic {contrast(sx, sy)[0]:.3f} "
            f"+- {contrast(sx, sy)[1]:.3f}; TRTS Dice {trts:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["charlie", "alpha", "delta"])
