"""Replay a compare log through the grid ETA's two rules: the predicted end after each finished run.

old rule: a remaining run costs its method's mean so far, an untimed method the mean of every run.
new rule: ``GridEta`` itself (the same, plus runs finished by an earlier call counted with their
recorded seconds, and an untimed method costed by its ``relative_cost``). Third column: the new
rule without the earlier runs (a fresh grid). Times are seconds since the call started; the ETA
divides by 2 runs at once.

Usage: .venv/bin/python docs/diagnostics/eta_replay.py docs/compare/twelve/compare-seeds12.log
docs/compare/twelve
"""

import re
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from simulator.driver.compare.schedule import GridEta, recorded_seconds  # noqa: E402

PLANNED = (
    "smg,fish,mldg,smg_gen,smd_replay_matched,smg_mem,smd_replay,lwf,joint,ewc,finetune,er_real"
)
CELLS = 4  # seeds 1-2 x random, reverse


def _seconds(h: str, m: str, s: str) -> int:
    return int(h) * 3600 + int(m) * 60 + int(s)


def _method(run: str) -> str:
    return run.rsplit("-", 3)[0]


def old_eta(timed: dict[str, list[float]], remaining: list[str]) -> float:
    """The rule before this release: an untimed method at the mean of every run so far."""
    mean = {m: sum(v) / len(v) for m, v in timed.items()}
    every = [s for v in timed.values() for s in v]
    return sum(mean.get(m, sum(every) / len(every)) for m in remaining) / 2


def main(log_path: str, grid: str) -> None:
    log = Path(log_path).read_text()
    skipped = re.findall(r"\] (\S+): finished earlier, skipped", log)
    finished = [
        (n, float(took), _seconds(h, m, s))
        for n, took, h, m, s in re.findall(
            r"compare: (\S+) finished in (\d+) s \(grid elapsed (\d+):(\d+):(\d+)", log
        )
    ]
    end = re.search(r"grid elapsed (\d+):(\d+):(\d+), 0 run", log)
    planned = [m for m in PLANNED.split(",") for _ in range(CELLS)]

    def plans(methods: list[str]) -> list:
        return [
            (m, SimpleNamespace(run=SimpleNamespace(method=m))) for m in methods
        ]  # GridEta reads run.method

    new = GridEta(plans([_method(n) for n in skipped] + planned), parallel=2)
    fresh = GridEta(plans(planned), parallel=2)
    old: dict[str, list[float]] = {}
    for n in skipped:  # seed 0's runs, as compare passes them: with their recorded seconds
        new.skip(_method(n), recorded_seconds(Path(grid) / "runs" / n))
    remaining = list(planned)
    print(
        "after run | elapsed | old rule | new rule | new rule without the earlier runs | "
        "actual end",
        _seconds(*end.groups()) if end else None,
    )
    print("start", 0, None, round(new.eta() or 0))
    for n, took, elapsed in finished:
        method = _method(n)
        remaining.remove(method)
        old.setdefault(method, []).append(took)
        new.done(method, took)
        fresh.done(method, took)
        print(
            n,
            elapsed,
            round(elapsed + old_eta(old, remaining)),
            round(elapsed + new.eta()),
            round(elapsed + fresh.eta()),
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
