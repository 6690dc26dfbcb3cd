"""Paired differences between the runs of one method in two comparison folders (same seeds and
orders, e.g. one setting on and off): Mem, Gen, BWT and FWT per (seed, order) cell with a
bootstrap 95 % CI, each site's TSTR ratio per seed and the prompt steps taken. Usage::

    .venv/bin/python docs/diagnostics/paired_runs.py DIR_A DIR_B LABEL_A LABEL_B \
        [--method smg] [--csv OUT.csv]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def load(root: Path, method: str) -> dict[tuple[str, str], dict]:
    """Per (seed, order): metrics, each site's TSTR ratio and prompt steps, of a folder's runs."""
    out = {}
    for d in sorted((root / "runs").glob(f"{method}-s*")):
        if not (d / "COMPLETE").exists():
            continue
        cfg = json.loads((d / "config.json").read_text())["run"]
        if cfg["method"] != method:
            continue
        smd = json.loads((d / "smd.json").read_text())["sites"]
        out[(str(cfg["seed"]), cfg["order"])] = {
            "metrics": json.loads((d / "metrics.json").read_text())["metrics"],
            "tstr": {s: v["tstr_ratio"] for s, v in smd.items()},
            "steps": {s: v.get("prompt_steps", float("nan")) for s, v in smd.items()},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("label_a")
    ap.add_argument("label_b")
    ap.add_argument("--method", default="smg")
    ap.add_argument("--csv", type=Path)
    args = ap.parse_args()
    A, B = load(args.a, args.method), load(args.b, args.method)
    la, lb = args.label_a, args.label_b
    cells = sorted(set(A) & set(B))
    rng = np.random.default_rng(0)
    print(f"{la} - {lb}: {args.method}, {len(cells)} paired (seed, order) cells")
    for k in ("Mem", "Gen", "BWT", "FWT"):
        a = np.array([A[c]["metrics"][k] for c in cells])
        b = np.array([B[c]["metrics"][k] for c in cells])
        d = a - b
        boots = [rng.choice(d, len(d)).mean() for _ in range(10000)]
        print(
            f"  {k}: {la} {a.mean():.3f} +- {a.std(ddof=1):.3f}, "
            f"{lb} {b.mean():.3f} +- {b.std(ddof=1):.3f}; "
            f"difference {d.mean():+.3f} [{np.percentile(boots, 2.5):+.3f}, "
            f"{np.percentile(boots, 97.5):+.3f}], "
            f"{int((d > 0).sum())}/{len(d)} higher"
        )
    seeds = sorted({c[0] for c in cells}, key=int)
    first = {
        s: next(c for c in cells if c[0] == s) for s in seeds
    }  # prompts do not depend on the order
    print(f"  TSTR ratio per site, seeds {', '.join(seeds)}:")
    for site in sorted(A[cells[0]]["tstr"]):
        a = [A[first[s]]["tstr"][site] for s in seeds]
        b = [B[first[s]]["tstr"][site] for s in seeds]
        print(
            f"    {site:8s} {la} {np.mean(a):.3f} ({', '.join(f'{x:.3f}' for x in a)})  "
            f"{lb} {np.mean(b):.3f} ({', '.join(f'{x:.3f}' for x in b)})"
        )
    for label, runs in ((la, A), (lb, B)):
        steps = [v for s in seeds for v in runs[first[s]]["steps"].values()]
        tstr = [v for s in seeds for v in runs[first[s]]["tstr"].values()]
        print(
            f"  {label}: mean TSTR ratio {np.mean(tstr):.3f}, "
            f"mean prompt steps {np.mean(steps):.1f}"
        )
    if args.csv:
        with args.csv.open("w", newline="") as f:
            w = csv.writer(f)
            sites = sorted(A[cells[0]]["tstr"])
            w.writerow(
                [
                    "folder",
                    "seed",
                    "order",
                    "Mem",
                    "Gen",
                    "BWT",
                    "FWT",
                    *[f"tstr/{s}" for s in sites],
                    *[f"prompt_steps/{s}" for s in sites],
                ]
            )
            for label, runs in ((la, A), (lb, B)):
                for c in cells:
                    r = runs[c]
                    w.writerow(
                        [
                            label,
                            *c,
                            *[round(r["metrics"][k], 6) for k in ("Mem", "Gen", "BWT", "FWT")],
                            *[round(r["tstr"][s], 6) for s in sites],
                            *[r["steps"][s] for s in sites],
                        ]
                    )


if __name__ == "__main__":
    main()
