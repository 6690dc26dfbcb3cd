"""When a comparison's runs start, and how long the rest of the grid will take.

:class:`GridEta` estimates the time left from the runs timed so far; :func:`next_job` picks the
next run to start when several run at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from simulator.config import Config


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class GridEta:
    """The time left in a comparison: each remaining run costs its method's mean run time so far.

    Runs finished by an earlier call count with the seconds their ``metrics.json`` recorded. A
    method not yet timed is costed from the runs timed so far, scaled by the methods'
    ``relative_cost`` (``cost_of``; methods differ several-fold: ``pga_sym`` trains about 11 times
    as long as ``finetune``). With ``parallel`` runs at once, the remaining time is the sum divided
    by ``parallel``.
    """

    def __init__(
        self,
        plans: list[tuple[str, Config]],
        parallel: int = 1,
        cost_of: Callable[[str], float] | None = None,
    ) -> None:
        self.remaining = [cfg.run.method for _, cfg in plans]
        self.parallel = max(1, parallel)
        self.seconds: dict[str, list[float]] = {}
        self.cost_of = cost_of or relative_cost
        self.t0 = time.perf_counter()

    def skip(self, method: str, seconds: float | None = None) -> None:
        """A run finished earlier; ``seconds``, its recorded run time, if known."""
        self.remaining.remove(method)
        if seconds is not None and seconds > 0:
            self.seconds.setdefault(method, []).append(seconds)

    def done(self, method: str, seconds: float) -> None:
        self.remaining.remove(method)
        self.seconds.setdefault(method, []).append(seconds)

    def eta(self) -> float | None:
        if not self.seconds:
            return None
        mean = {m: sum(v) / len(v) for m, v in self.seconds.items()}
        # seconds per unit of relative cost, over every timed run
        runs = [(m, s) for m, v in self.seconds.items() for s in v]
        unit = sum(s for _, s in runs) / sum(self.cost_of(m) for m, _ in runs)
        return (
            sum(mean[m] if m in mean else unit * self.cost_of(m) for m in self.remaining)
            / self.parallel
        )

    def line(self) -> str:
        eta = self.eta()
        return (
            f"grid elapsed {fmt_duration(time.perf_counter() - self.t0)}, "
            f"{len(self.remaining)} run(s) left, ETA "
            f"{fmt_duration(eta) if eta is not None else '?'}"
        )


def relative_cost(method: str) -> float:
    """The registered method's ``relative_cost`` (its training time over ``finetune``'s)."""
    from server.methods import method_class

    return method_class(method).relative_cost


def recorded_seconds(folder: Path) -> float | None:
    """A finished run's ``timings.total_seconds`` from its ``metrics.json``, or None if
    unreadable."""
    try:
        return float(json.loads((folder / "metrics.json").read_text())["timings"]["total_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def next_job(
    queue: list[tuple[int, str, Config]],
    running_seeds: set[int],
    cost_of: Callable[[str], float] | None = None,
) -> int:
    """Index in ``queue`` of the next run to start: from the first (seed, order) cell that has a
    run whose seed no running run has, that cell's costliest such run.

    Runs of one seed share each site's prompt and replay figures; started apart, the first
    makes them and the later ones reuse them instead of making them twice at once. Within a
    cell the costliest run (by ``cost_of``, default each method's ``relative_cost``) goes first,
    so the grid does not end on one long run with the other slots idle; cells still finish in
    plan order.
    """
    cost = cost_of or relative_cost
    apart = [k for k, (_, _, cfg) in enumerate(queue) if cfg.run.seed not in running_seeds]
    if not apart:
        apart = list(range(len(queue)))
    first = queue[apart[0]][2].run
    cell = [
        k
        for k in apart
        if (queue[k][2].run.seed, queue[k][2].run.order) == (first.seed, first.order)
    ]
    return max(cell, key=lambda k: cost(queue[k][2].run.method))  # the first of equals on a tie
