"""A run's live figures for the dashboard: stage, step, loss, Dice, Mem, Gen and site traffic.

Every figure carries the run's tag, so the runs of a comparison can be told apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class LiveFigures:
    """Sets the gauges and counters of :mod:`simulator.telemetry` for one run."""

    def __init__(self, sink: Any, tag: str, order: list[str]) -> None:
        """``sink``: the backend's metrics (gauges and counters), ``tag``: the run's name."""
        self.sink = sink
        self.tag = tag
        self.order = order

    def traffic(self, entry: dict[str, Any]) -> None:
        """Count a ledger entry that left a site (messages and bytes per site)."""
        src = str(entry.get("src", ""))
        if src.startswith("site:"):
            site = src[len("site:") :]
            self.sink.count("smg_site_messages", 1, run=self.tag, site=site)
            self.sink.count("smg_site_bytes", entry["bytes"], run=self.tag, site=site)

    def step(self, site: str, done: int, loss: float, seconds_per_step: float) -> None:
        """The visit's progress after a chunk of training steps."""
        self.sink.gauge("smg_step", done, run=self.tag, site=site)
        self.sink.gauge("smg_loss", loss, run=self.tag, site=site)
        self.sink.gauge("smg_step_seconds", seconds_per_step, run=self.tag, site=site)

    def stage(self, stage: int, row: np.ndarray) -> None:
        """A stage's row of R: Dice per site, Mem and Gen."""
        self.sink.gauge("smg_stage", stage, run=self.tag)
        for site, dice in zip(self.order, row, strict=True):
            self.sink.gauge("smg_dice", dice, run=self.tag, site=site)
        if stage >= 2:
            self.sink.gauge("smg_mem", float(row[: stage - 1].mean()), run=self.tag)
        if stage < len(self.order):
            self.sink.gauge("smg_gen", float(row[stage:].mean()), run=self.tag)

    def close(self) -> None:
        self.sink.close()
