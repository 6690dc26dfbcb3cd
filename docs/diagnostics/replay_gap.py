"""Forgetting against replay: does the final model still segment each earlier site's replay?

For a finished run folder: the learner's final weights and the replay it trained on (both in the
run's last checkpoint; the replay is synthetic, drawn from each site's exported prompt, so this
reads no real image). Per site, in visiting order: the Dice on its real test split right after its
own stage and after the last stage (both from ``R.csv``, measured inside the sites), and the Dice
of the final model on the site's replay pairs. A site that is forgotten on real images while its
replay is still segmented well was protected on the replay, and the replay did not carry what the
real images need (a gap that a TSTR ratio, which trains from scratch, need not show); a site whose
replay Dice fell with its real Dice was not protected enough by the replay it had. Usage::

    .venv/bin/python docs/diagnostics/replay_gap.py RUN_DIR [RUN_DIR ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from simulator.segmentation import UNet, dice_per_image, predict


def _checkpoint(run: Path) -> dict[str, np.ndarray]:
    latest = (run / "checkpoint" / "LATEST").read_text().strip() if (run / "checkpoint" / "LATEST").exists() else ""
    stage = run / "checkpoint" / (latest or sorted(p.name for p in (run / "checkpoint").glob("stage-*"))[-1])
    with np.load(stage / "arrays.npz") as z:
        return {k: z[k] for k in z.files}


def gap(run: Path) -> dict:
    arrays = _checkpoint(run)
    cfg = json.loads((run / "config.json").read_text())
    weights = {k[len("learner/weights/"):]: v for k, v in arrays.items() if k.startswith("learner/weights/")}
    model = UNet(1, int(cfg["model"]["width"]), int(cfg["model"]["depth"]))
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    rows = list(csv.DictReader((run / "R.csv").open()))
    order = [r["visited"] for r in rows[1:]]
    last = rows[-1]
    out = {"run": run.name, "sites": []}
    for i, site in enumerate(order):
        own = float(rows[i + 1][site])
        row = {"site": site, "stage": i + 1, "real_after_own_stage": own, "real_final": float(last[site])}
        key = f"learner/bank/replay/{site}/x"
        if key in arrays:
            x = torch.from_numpy(arrays[key]).float()
            y = torch.from_numpy(arrays[f"learner/bank/replay/{site}/y"].astype(np.float32))
            row["replay_final"] = float(dice_per_image(predict(model, x), y).mean())
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
        print(f"  {'site':<9} {'stage':>5} {'real@own':>9} {'real@end':>9} {'replay@end':>10}")
        for s in r["sites"]:
            rep = f"{s['replay_final']:.3f}" if "replay_final" in s else "-"
            print(f"  {s['site']:<9} {s['stage']:>5} {s['real_after_own_stage']:>9.3f} {s['real_final']:>9.3f} {rep:>10}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
