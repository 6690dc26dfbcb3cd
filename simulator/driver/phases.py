"""Where a run's seconds go: wall time per phase, for the run and for each stage.

``actors`` is the creation of the site and learner actors with the first call to each
(a site builds its data there); ``writing`` covers results, plots and the privacy audit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

#: The phases of a run, in the order a run meets them (the keys of ``timings.phases``).
PHASES = (
    "ray_start",
    "actors",
    "smd_pretraining",
    "training",
    "prompt_tuning",
    "replay_sampling",
    "fidelity",
    "memorisation",
    "evaluation",
    "attribution",
    "writing",
)


class PhaseClock:
    """Adds wall seconds to named phases; a stage's own share is kept apart while it runs."""

    def __init__(self) -> None:
        self.total: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.stage: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        if phase not in self.total:
            raise KeyError(f"unknown phase {phase!r}; known: {', '.join(PHASES)}")
        self.total[phase] += seconds
        self.stage[phase] = self.stage.get(phase, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def end_stage(self) -> dict[str, float]:
        """This stage's seconds per phase (and start counting the next stage)."""
        out, self.stage = self.stage, {}
        return out
