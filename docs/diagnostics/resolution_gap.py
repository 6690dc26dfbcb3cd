"""Is a forgotten site forgotten on real images only? Dice of a run's final model on each site's
real test images, on the same images degraded to the replay's resolution, and on its replay.

SMD samples at ``smd.image_size`` (32 px on the quick profile) and the replay is upsampled
(bilinear) to the data size (64 px); real images are sharp. For a finished run folder this
script plays each site's part in one process, as the other diagnostics here do (it builds the
site's data from the run's config; no image leaves the process, only Dice values are printed):
the final model's Dice on the real test split (``real``), on the same images taken down to the
SMD resolution (area) and back up (bilinear), the replay's own path (``real@smd_res``), and on the
site's replay from the run's checkpoint (``replay``). A model that segments ``real@smd_res`` and
``replay`` well but ``real`` badly tells a site's images apart from its replay by their
sharpness, and applies another site's rule to the sharp ones. Usage::

    .venv/bin/python docs/diagnostics/resolution_gap.py RUN_DIR [RUN_DIR ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from simulator.benchmarks.catalog import SITE_NAMES
from simulator.config import Config
from simulator.driver.plan import site_spec
from simulator.segmentation import UNet, dice_per_image, predict
from sites.datasets import build_site_data


def _checkpoint(run: Path) -> dict[str, np.ndarray]:
    root = run / "checkpoint"
    latest = (root / "LATEST").read_text().strip() if (root / "LATEST").exists() else ""
    stage = root / (latest or sorted(p.name for p in root.glob("stage-*"))[-1])
    with np.load(stage / "arrays.npz") as z:
        return {k: z[k] for k in z.files}


def _dice(model: UNet, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(dice_per_image(predict(model, x), y).mean())


def gap(run: Path) -> dict:
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    arrays = _checkpoint(run)
    weights = {
        k[len("learner/weights/") :]: v
        for k, v in arrays.items()
        if k.startswith("learner/weights/")
    }
    model = UNet(1, cfg.model.width, cfg.model.depth)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    order = [r["visited"] for r in list(csv.DictReader((run / "R.csv").open()))[1:]]
    small = cfg.smd.image_size
    out = {"run": run.name, "sites": []}
    for stage, name in enumerate(order, start=1):
        d = build_site_data(
            dataclasses.replace(site_spec(cfg, name, SITE_NAMES.index(name)), data_dir="")
        )
        x = torch.from_numpy(d.test_x.astype(np.float32))
        y = torch.from_numpy(d.test_y.astype(np.float32))
        size = x.shape[-1]
        low = F.interpolate(
            F.interpolate(x, size=(small, small), mode="area"),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        )
        row = {
            "site": name,
            "stage": stage,
            "real": _dice(model, x, y),
            "real_at_smd_res": _dice(model, low, y),
        }
        if f"learner/bank/replay/{name}/x" in arrays:
            rx = torch.from_numpy(arrays[f"learner/bank/replay/{name}/x"]).float()
            ry = torch.from_numpy(arrays[f"learner/bank/replay/{name}/y"].astype(np.float32))
            row["replay"] = _dice(model, rx, ry)
        out["sites"].append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    res = [gap(r) for r in a.runs]
    for r in res:
        print(r["run"])
        print(f"  {'site':<9} {'stage':>5} {'real':>6} {'real@smd_res':>12} {'replay':>7}")
        for s in r["sites"]:
            rep = f"{s['replay']:.3f}" if "replay" in s else "-"
            print(
                f"  {s['site']:<9} {s['stage']:>5} {s['real']:>6.3f} "
                f"{s['real_at_smd_res']:>12.3f} {rep:>7}"
            )
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
