"""Simulated wall time of a two-at-a-time grid under the old and the new choice of the next run.

Each run takes the seconds it took in ``docs/compare/twelve/runs.csv`` (measured two at a time),
whatever runs beside it; the simulation replays ``compare``'s scheduler with those durations.
old: the first run (in plan order) whose seed no running run has. new: ``next_job`` today (that
run's cell, its costliest run first). Methods listed in three orders: registry, alphabetical, and
costliest first (the order the measured grid used).

Usage: .venv/bin/python docs/diagnostics/schedule_sim.py
"""

import dataclasses
import heapq
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from server.methods import METHODS  # noqa: E402
from simulator.config import build_config  # noqa: E402
from simulator.driver.compare.schedule import next_job  # noqa: E402


def _old_next(queue, running_seeds, _cost=None):
    return next((k for k, (_, _, c) in enumerate(queue) if c.run.seed not in running_seeds), 0)


def makespan(methods, seconds, choose, seeds=(0, 1, 2), orders=("random", "reverse"), slots=2):
    base = build_config("quick")
    queue = []
    for seed in seeds:
        for order in orders:
            for m in methods:
                cfg = dataclasses.replace(
                    base, run=dataclasses.replace(base.run, method=m, seed=seed, order=order)
                )
                queue.append((len(queue) + 1, f"{m}-{seed}-{order}", cfg))
    clock, running = 0.0, []  # heap of (end, seed)
    while queue or running:
        while queue and len(running) < slots:
            _, _, cfg = queue.pop(choose(queue, {s for _, s in running}))
            heapq.heappush(
                running,
                (clock + seconds[(cfg.run.method, cfg.run.seed, cfg.run.order)], cfg.run.seed),
            )
        clock, _ = heapq.heappop(running)
    return clock


def main() -> None:
    runs = pd.read_csv(ROOT / "docs" / "compare" / "twelve" / "runs.csv")
    seconds = {(r.method, r.seed, r.order): r.seconds for r in runs.itertuples()}
    methods = list(dict.fromkeys(runs["method"]))
    orders = {
        "registry order": [m for m in METHODS if m in methods],
        "alphabetical": sorted(methods),
        "costliest first": sorted(methods, key=lambda m: -METHODS[m].relative_cost),
    }
    print(f"lower bound (run seconds / 2): {runs['seconds'].sum() / 2:.0f} s")
    for name, order in orders.items():
        for label, seeds in (("seed 0", (0,)), ("seeds 0-2", (0, 1, 2))):
            old = makespan(order, seconds, _old_next, seeds)
            new = makespan(order, seconds, next_job, seeds)
            print(f"{name:16s} {label:9s} old {old:6.0f} s  new {new:6.0f} s")


if __name__ == "__main__":
    main()
