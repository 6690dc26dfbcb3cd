"""Re-time some methods into ``docs/diagnostics/bench-methods.json`` (the file each method's
``relative_cost`` is checked against), with ``finetune`` timed again in the same call.

Usage (alone on the machine): ``.venv/bin/python docs/diagnostics/bench_methods.py smg,smg_mem``.
Each named method's step rows and projected training seconds are replaced; finetune's too, and
the methods not named keep their rows, rescaled by the ratio of finetune's new projection to
its old one so that every relative cost stays a ratio to the same finetune. Prints each
method's relative cost (projection over finetune's, one decimal), the value its class declares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from simulator.config import build_config
from simulator.driver.bench import step_cost

FILE = Path(__file__).resolve().parent / "bench-methods.json"
STAGES = (2, 6)
STEPS = 10


def project(per_stage: dict[int, float]) -> float:
    """Training seconds of a quick run: 100 steps at each of 6 stages, stage 1 at stage 2's cost,
    stages 3-5 interpolated between stages 2 and 6."""
    s2, s6 = per_stage[2], per_stage[6]
    stages = [s2, s2, *(s2 + (s6 - s2) * k / 4 for k in (1, 2, 3)), s6]
    return round(100 * sum(stages), 1)


def main(names: list[str]) -> None:
    data = json.loads(FILE.read_text())
    methods = ["finetune", *[n for n in names if n != "finetune"]]
    rows = step_cost(build_config("quick"), methods, list(STAGES), STEPS)
    projected = {
        m: project({r["stage"]: r["seconds_per_step"] for r in rows if r["method"] == m})
        for m in methods
    }
    scale = projected["finetune"] / data["training_seconds_projected"]["finetune"]
    for m, v in data["training_seconds_projected"].items():
        if m not in projected:
            projected[m] = round(v * scale, 1)
    data["steps"] = [r for r in data["steps"] if r["method"] not in methods] + rows
    data["training_seconds_projected"] = dict(sorted(projected.items()))
    data["command"] += (
        f"; re-timed: .venv/bin/python docs/diagnostics/bench_methods.py {','.join(names)} "
        f"(the others rescaled by finetune's new projection over its old, {scale:.3f})"
    )
    FILE.write_text(json.dumps(data, indent=1) + "\n")
    for m, v in sorted(projected.items()):
        print(f"{m:20s} {v:7.1f} s  relative cost {round(v / projected['finetune'], 1)}")


if __name__ == "__main__":
    main(sys.argv[1].split(","))
