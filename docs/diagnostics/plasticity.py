"""Learning accuracy and retention of a committed comparison, recomputed from its runs' R.csv.

LA is the mean Dice on each site right after learning it (R[i][i]); retention the mean over
earlier sites of the final Dice over that Dice. Prints the per-method means and the paired
differences against the baseline (bootstrap 95 % CI, sign test), as ``compare`` computes them,
and writes them to a CSV. Usage::

    .venv/bin/python docs/diagnostics/plasticity.py docs/compare/smg_vs_matched \\
        --baseline smd_replay_matched --out docs/diagnostics/plasticity_smg_vs_matched.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from simulator.driver.compare.stats import paired_table
from simulator.driver.runfolder import read_R
from simulator.metrics import all_metrics

SHOWN = ("Mem", "Gen", "BWT", "LA", "Retention")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = []
    for run in sorted((args.folder / "runs").iterdir()):
        cfg = json.loads((run / "config.json").read_text())["run"]
        m = all_metrics(read_R(run / "R.csv")[0])
        rows.append({"method": cfg["method"], "seed": cfg["seed"], "order": cfg["order"], **m})
    runs = pd.DataFrame(rows)
    means = runs.groupby("method")[list(SHOWN)].mean()
    print(means.round(3).to_string())
    paired = paired_table(runs, list(SHOWN), args.baseline)
    print(paired.round(4).to_string(index=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    paired.to_csv(args.out, index=False, float_format="%.4f")


if __name__ == "__main__":
    main()
