"""Scalar bits each site sends the learner in a run, for every private method and number of
sites: what the default cap (``privacy.scalar_bits_cap``) must allow.

Each run is a real run (in-process engine, cap set out of reach so nothing is refused); its
audit's scalar budget gives every site's total, by message kind, and its largest visit, and its
verdict is kept (no false alarm). Writes a CSV (one row per run and site) and prints per method
and number of sites the largest site total and the audit's verdict.

The bits of a reply depend on which scalars it holds (the method's logs, the replay sites in its
alignment summary, how many chunks a visit has), not on image size or step count: ``--profile
smoke --set train.progress_every=3`` gives each visit the quick profile's four chunks (100 steps
in chunks of 25) at smoke cost, and ``--check-quick`` runs the quick profile itself for the cells
named, to confirm. Usage::

    .venv/bin/python docs/diagnostics/scalar_bits.py --profile smoke \\
        --set train.progress_every=3 --sites 2,6,10 --out docs/diagnostics/scalar_bits.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

PRIVATE = (
    "finetune",
    "ewc",
    "lwf",
    "fish",
    "mldg",
    "pga_exact",
    "pga_sym",
    "smd_replay",
    "smd_replay_matched",
    "smg",
    "smg_mem",
    "smg_gen",
)


def one_run(method: str, sites: int, profile: str, sets: list[str], root: Path) -> list[dict]:
    from simulator.config import build_config, parse_set
    from simulator.driver import api

    out = root / f"{profile}-{method}-{sites}"
    cfg = build_config(
        profile,
        parse_set(
            [
                "runtime.engine=inprocess",
                f"run.method={method}",
                f"run.sites={sites}",
                "run.order=random",
                "privacy.scalar_bits_cap=1000000000",
                f"run.out={out}",
                *sets,
            ]
        ),
    )
    t0 = time.perf_counter()
    api.run(cfg, progress=False)
    seconds = time.perf_counter() - t0
    audit = json.loads((out / "privacy_audit.json").read_text())
    return [
        {
            "profile": profile,
            "method": method,
            "sites": sites,
            "site": site,
            "total": row["total"],
            "visit_max": row["visit_max"],
            **{f"kind_{k}": v for k, v in row["by_kind"].items()},
            "seconds": round(seconds, 1),
            "audit": audit["verdict_text"],
        }
        for site, row in audit["scalar_bits"].items()
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--sites", default="2,6,10")
    ap.add_argument("--methods", default=",".join(PRIVATE))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sites.split(",")):
            for m in args.methods.split(","):
                got = one_run(m, n, args.profile, args.sets, Path(tmp))
                rows += got
                print(
                    f"{args.profile} {m:20s} {n:2d} sites: largest site total "
                    f"{max(r['total'] for r in got):7.0f} bits, largest visit "
                    f"{max(r['visit_max'] for r in got):6.0f} ({got[0]['seconds']:.0f} s); "
                    f"audit {got[0]['audit']}",
                    flush=True,
                )
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k.startswith("kind_"), k))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(f"largest site total over all runs: {max(r['total'] for r in rows):.0f} bits")


if __name__ == "__main__":
    main()
