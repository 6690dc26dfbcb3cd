"""Replay a compare log through the grid ETA's two rules: the predicted end after each finished run.

old rule: a remaining run costs its method's mean so far, an untimed method the mean of every run.
new rule: the same, plus runs finished by an earlier call counted with their recorded seconds, and
an untimed method costed by its ``relative_cost``. Third column: the new rule without the earlier
runs (a fresh grid). Times are seconds since the call started; the ETA divides by 2 runs at once.

Usage: .venv/bin/python docs/diagnostics/eta_replay.py docs/compare/twelve/compare-seeds12.log docs/compare/twelve
"""

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from server.methods import METHODS  # noqa: E402

PLANNED = "smg,fish,mldg,smg_gen,smd_replay_matched,smg_mem,smd_replay,lwf,joint,ewc,finetune,er_real"
CELLS = 4  # seeds 1-2 x random, reverse


def _seconds(h: str, m: str, s: str) -> int:
    return int(h) * 3600 + int(m) * 60 + int(s)


def _method(run: str) -> str:
    return run.rsplit("-", 3)[0]


def eta(timed: dict[str, list[float]], remaining: list[str], by_cost: bool) -> float | None:
    if not timed:
        return None
    mean = {m: sum(v) / len(v) for m, v in timed.items()}
    runs = [(m, s) for m, v in timed.items() for s in v]
    total = sum(s for _, s in runs)
    if by_cost:
        unit = total / sum(METHODS[m].relative_cost for m, _ in runs)
        untimed = {m: unit * METHODS[m].relative_cost for m in remaining}
    else:
        untimed = {m: total / len(runs) for m in remaining}
    return sum(mean.get(m, untimed[m]) for m in remaining) / 2


def main(log_path: str, grid: str) -> None:
    log = Path(log_path).read_text()
    skipped = re.findall(r"\] (\S+): finished earlier, skipped", log)
    finished = [(n, _seconds(h, m, s)) for n, h, m, s in
                re.findall(r"compare: (\S+) finished in \d+ s \(grid elapsed (\d+):(\d+):(\d+)", log)]
    end = re.search(r"grid elapsed (\d+):(\d+):(\d+), 0 run", log)
    old: dict[str, list[float]] = {}
    new: dict[str, list[float]] = {}
    fresh: dict[str, list[float]] = {}
    for n in skipped:
        metrics = json.loads((Path(grid) / "runs" / n / "metrics.json").read_text())
        new.setdefault(_method(n), []).append(metrics["timings"]["total_seconds"])
    remaining = [m for m in PLANNED.split(",") for _ in range(CELLS)]
    print("after run | elapsed | old rule | new rule | new rule without the earlier runs | actual end",
          _seconds(*end.groups()) if end else None)
    print("start", 0, None, round(eta(new, remaining, True) or 0))
    for n, elapsed in finished:
        method = _method(n)
        remaining.remove(method)
        # a run's seconds: from its "finished in N s" line
        took = float(re.search(rf"compare: {re.escape(n)} finished in (\d+) s", log).group(1))
        for timed in (old, new, fresh):
            timed.setdefault(method, []).append(took)
        print(n, elapsed, round(elapsed + eta(old, remaining, False)), round(elapsed + eta(new, remaining, True)),
              round(elapsed + eta(fresh, remaining, True)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
