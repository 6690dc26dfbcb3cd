"""Progress lines for long runs: stage, site, step, elapsed time and ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


class Progress:
    """Prints progress to a stream; the ETA is extrapolated from completed work units."""

    def __init__(
        self, total_units: float, stream: TextIO | None = None, enabled: bool = True
    ) -> None:
        self.total = max(float(total_units), 1e-9)
        self.done = 0.0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def advance(self, units: float) -> None:
        self.done = min(self.total, self.done + units)

    def eta(self) -> float | None:
        elapsed = time.perf_counter() - self.t0
        if self.done <= 0:
            return None
        return elapsed / self.done * (self.total - self.done)

    def line(self, text: str, final: bool = False) -> None:
        """Print ``text`` with elapsed time and ETA appended."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        eta = self.eta()
        pct = 100.0 * self.done / self.total
        tail = f"{pct:5.1f}% elapsed {_fmt(elapsed)} ETA {_fmt(eta) if eta is not None else '?'}"
        msg = f"{text} | {tail}"
        if self._tty and not final:
            self.stream.write("\r\033[K" + msg)
        else:
            self.stream.write(("\r\033[K" if self._tty else "") + msg + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A plain line (ends any in-place progress line)."""
        if not self.enabled:
            return
        self.stream.write(("\r\033[K" if self._tty else "") + text + "\n")
        self.stream.flush()


class RunProgress(Progress):
    """Progress of one run; it owns the unit count and the advance of each phase.

    Units: one per evaluation of every site (T + 1 of them), three per visit (spread over
    its training chunks) and, with SMD replay, two per prompt tuning and replay check.
    """

    EVALUATION, VISIT, SMD = 1.0, 3.0, 2.0

    def __init__(
        self, stages: int, smd: bool, stream: TextIO | None = None, enabled: bool = True
    ) -> None:
        total = (
            (stages + 1) * self.EVALUATION
            + stages * self.VISIT
            + (stages * self.SMD if smd else 0.0)
        )
        super().__init__(total, stream, enabled)
        self.smd = smd

    def evaluated(self) -> None:
        self.advance(self.EVALUATION)

    def trained(self, chunk: int, steps: int) -> None:
        self.advance(self.VISIT * chunk / steps)

    def smd_checked(self) -> None:
        self.advance(self.SMD)

    def skip_to(self, stage: int) -> None:
        """A resumed run: the units of stages 0..``stage`` are done."""
        done = (
            (stage + 1) * self.EVALUATION
            + stage * self.VISIT
            + (stage * self.SMD if self.smd else 0.0)
        )
        self.done = min(self.total, done)

    def restart_clock(self) -> None:
        """Start the ETA's clock now (after pre-training, which the ETA does not cover)."""
        self.t0 = time.perf_counter()
