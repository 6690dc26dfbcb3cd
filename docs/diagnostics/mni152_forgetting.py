"""The mni152 forgetting measurements: every finished run of a folder, its metrics, and the
resolution gap of its final model (see ``resolution_gap.py``).

Writes ``docs/diagnostics/mni152_forgetting.csv`` (one row per run: method, seed, order, the
``train.replay_resolution_match`` it ran with, Mem, Gen, Final, BWT, Forgetting, and the mean
over earlier sites of the final model's Dice on real test images, on the same images at the SMD
resolution, and on the replay) and ``mni152_forgetting.json`` (per site). Usage::

    .venv/bin/python docs/diagnostics/mni152_forgetting.py COMPARE_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resolution_gap import gap  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]]
    runs = []
    for p in paths:
        runs += (
            sorted(d for d in (p / "runs").glob("*") if (d / "COMPLETE").exists())
            if (p / "runs").is_dir()
            else [p]
        )
    torch.set_num_threads(1)
    rows, detail = [], []
    for run in runs:
        cfg = json.loads((run / "config.json").read_text())
        m = json.loads((run / "metrics.json").read_text())["metrics"]
        g = gap(run)
        earlier = [s for s in g["sites"] if "replay" in s]
        row = {
            "run": run.name,
            "method": cfg["run"]["method"],
            "seed": cfg["run"]["seed"],
            "order": cfg["run"]["order"],
            "resolution_match": cfg["train"].get("replay_resolution_match", 0.0),
            **{k: m[k] for k in ("Mem", "Gen", "Final", "BWT", "Forgetting")},
        }
        for key in ("real", "real_at_smd_res", "replay"):
            row[f"earlier_{key}"] = (
                sum(s[key] for s in earlier) / len(earlier) if earlier else float("nan")
            )
        rows.append(row)
        detail.append(g)
        print(
            run.name,
            {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items() if k != "run"},
            flush=True,
        )
    pd.DataFrame(rows).to_csv(HERE / "mni152_forgetting.csv", index=False, float_format="%.4f")
    (HERE / "mni152_forgetting.json").write_text(json.dumps(detail, indent=1) + "\n")


if __name__ == "__main__":
    main()
