"""The run folder: config, ledger, R, stages, metrics, plots and a marker written last.

Layout::

    config.json      resolved configuration, written before any work
    sites.json       site names, visiting order, data facts (scalars only)
    ledger.jsonl     one line per message crossing a site boundary
    stages.jsonl     one line per stage: site, losses, timings, Dice row
    R.csv            evaluation matrix, site names as headers in visiting order
    metrics.json     Mem, Gen, Final, BWT, FWT, Forgetting and per-stage curves
    R.png, mem_gen.png
    weights.npz      final segmentation weights
    checkpoint/      the latest stage's checkpoint (see simulator.driver.checkpoint)
    COMPLETE         written last; a folder without it is unfinished (see FAILED)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simulator.errors import RunFolderError

MARKER = "COMPLETE"
FAILED = "FAILED"
TRACEBACK = "traceback.txt"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (nan becomes null)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(_clean(data), fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def check_new(path: Path) -> None:
    """Refuse a folder that already holds files, so nothing already written is overwritten."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunFolderError(
            f"run folder {path} already exists and is not empty; choose another --out or remove it"
        )


class RunFolder:
    """Writes one run's results."""

    def __init__(self, path: Path, new: bool = True) -> None:
        if new:
            check_new(path)
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def existing(cls, path: Path) -> RunFolder:
        """The folder of a run that is continued (see ``smg-sim resume``)."""
        return cls(path, new=False)

    def file(self, name: str) -> Path:
        return self.path / name

    def append_stage(self, row: dict[str, Any]) -> None:
        with self.file("stages.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(_clean(row), sort_keys=True) + "\n")

    def write_R(self, R: np.ndarray, order: list[str]) -> Path:
        df = r_frame(R, order)
        df.to_csv(self.file("R.csv"), index=False, float_format="%.6f")
        return self.file("R.csv")

    def write_weights(self, weights: dict[str, np.ndarray]) -> None:
        tmp = self.file(".weights.npz")
        with tmp.open("wb") as fh:
            np.savez(fh, **weights)
        os.replace(tmp, self.file("weights.npz"))

    def mark_complete(self) -> None:
        self.file(FAILED).unlink(missing_ok=True)
        self.file(MARKER).write_text("ok\n")

    def mark_failed(self, exc: BaseException) -> None:
        """``FAILED``: one line saying why, and the file that holds the driver's traceback
        (``traceback.txt``; a site's own failure names the site's log in the line itself)."""
        import traceback

        self.file(TRACEBACK).write_text("".join(traceback.format_exception(exc)))
        line = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
        self.file(FAILED).write_text(f"{line}\nthe driver's traceback: {self.file(TRACEBACK)}\n")


def r_frame(R: np.ndarray, order: list[str]) -> pd.DataFrame:
    """R as a table: a row per stage (0 = untrained), the visited site, Dice per site."""
    rows = []
    for i in range(R.shape[0]):
        row = {"stage": i, "visited": order[i - 1] if i > 0 else "(untrained)"}
        row.update({name: R[i, j] for j, name in enumerate(order)})
        rows.append(row)
    return pd.DataFrame(rows)


def read_R(path: Path) -> tuple[np.ndarray, list[str]]:
    """Read R.csv back: the matrix and the visiting order."""
    df = pd.read_csv(path)
    order = [c for c in df.columns if c not in ("stage", "visited")]
    return df[order].to_numpy(dtype=float), order


def is_complete(path: Path) -> bool:
    """Whether a run folder holds a finished run."""
    return (Path(path) / MARKER).exists()
