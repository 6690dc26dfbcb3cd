"""Progress of long work: stage, site, step, elapsed time and ETA.

On a terminal a ``rich`` progress bar shows the current step in place, with the percentage,
elapsed time and ETA, and messages scroll above it; to anything else (a log file, a pipe, a
notebook cell) every update is a plain line of text with the same figures.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


class Progress:
    """Reports progress to a stream; the ETA is extrapolated from completed work units.

    Call :meth:`close` when the work ends (it stops the terminal's progress bar).
    """

    def __init__(
        self, total_units: float, stream: TextIO | None = None, enabled: bool = True
    ) -> None:
        self.total = max(float(total_units), 1e-9)
        self.done = 0.0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self._bar = None  # the rich progress display, started by the first update on a terminal
        self._task = None
        self._tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

    def advance(self, units: float) -> None:
        self.done = min(self.total, self.done + units)

    def eta(self) -> float | None:
        elapsed = time.perf_counter() - self.t0
        if self.done <= 0:
            return None
        return elapsed / self.done * (self.total - self.done)

    def _figures(self) -> tuple[float, str, str]:
        eta = self.eta()
        elapsed = _fmt(time.perf_counter() - self.t0)
        return 100.0 * self.done / self.total, elapsed, _fmt(eta) if eta is not None else "?"

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TaskProgressColumn, TextColumn
        from rich.progress import Progress as RichProgress

        console = Console(file=self.stream)
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            TextColumn("elapsed {task.fields[elapsed]} ETA {task.fields[eta]}"),
            console=console,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("", total=self.total, elapsed="0:00", eta="?")

    def line(self, text: str, final: bool = False) -> None:
        """Show ``text`` as the current step, with the percentage, elapsed time and ETA."""
        if not self.enabled:
            return
        pct, elapsed, eta = self._figures()
        if self._tty and not final:
            if self._bar is None:
                self._start_bar()
            self._bar.update(
                self._task, description=text, completed=self.done, elapsed=elapsed, eta=eta
            )
            return
        self.message(f"{text} | {pct:5.1f}% elapsed {elapsed} ETA {eta}")

    def message(self, text: str) -> None:
        """A plain line (above the progress bar on a terminal)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
            return
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Stop the progress bar (a no-op when there is none)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


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
            (stages + 1) * self.EVALUATION + stages * self.VISIT + (stages * self.SMD if smd else 0)
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
        smd = stage * self.SMD if self.smd else 0.0
        done = (stage + 1) * self.EVALUATION + stage * self.VISIT + smd
        self.done = min(self.total, done)

    def restart_clock(self) -> None:
        """Start the ETA's clock now (after pre-training, which the ETA does not cover)."""
        self.t0 = time.perf_counter()
