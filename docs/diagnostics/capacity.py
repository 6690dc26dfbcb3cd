"""How well the segmentation U-Net learns one phantom site alone, by width and learning rate.

For each of the six phantom sites (quick profile sizes, run seed 0): a fresh U-Net trained on the
site's train split for STEPS Adam steps of batch 16, then its Dice on the site's test split; one
line per width with the per-site Dice, their mean and the seconds taken (2 torch threads). This
is the measurement behind the quick profile's width and learning rate. Usage::

    .venv/bin/python docs/diagnostics/capacity.py --widths 8,12 --steps 100 --lr 0.002 [--size 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from simulator.benchmarks.catalog import SITE_NAMES
from simulator.config import build_config, parse_set
from simulator.driver.plan import site_spec
from simulator.seeding import torch_generator
from simulator.segmentation import build_model, dice_per_image, predict, seg_loss
from sites.datasets import build_site_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="8,12")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--depth", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(2)
    cfg = build_config("quick", parse_set([f"data.image_size={a.size}"]))
    names = list(SITE_NAMES[:6])
    data = {
        n: build_site_data(dataclasses.replace(site_spec(cfg, n, i), data_dir=""))
        for i, n in enumerate(names)
    }

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x.astype(np.float32))

    for w in (int(v) for v in a.widths.split(",")):
        t0, row = time.perf_counter(), []
        for n in names:
            d = data[n]
            model = build_model(1, w, a.depth, seed=1).to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters(), a.lr)
            gen = torch_generator(0)
            x, y = t(d.train_x), t(d.train_y)
            model.train()
            for _ in range(a.steps):
                idx = torch.randint(len(x), (16,), generator=gen)
                loss = seg_loss(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            row.append(float(dice_per_image(predict(model, t(d.test_x)), t(d.test_y)).mean()))
        print(
            f"width {w} lr {a.lr:g} steps {a.steps} size {a.size}: "
            + " ".join(f"{n} {v:.3f}" for n, v in zip(names, row, strict=True))
            + f" mean {np.mean(row):.3f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
