"""Paired evidence for method comparisons: per-cell differences, bootstrap CI, sign test.

A *cell* is one (seed, order) pair. Two methods run on the same cell see the same data,
site order and initialisation seeds, so their difference on a cell is a paired observation.
These are pure functions of the runs table that ``compare.summarize`` builds (columns
``method``, ``seed``, ``order`` and one column per metric).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from simulator.errors import ConfigError

CELL = ("seed", "order")
PAIRED_COLUMNS = (
    "method",
    "baseline",
    "metric",
    "cells",
    "wins",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
)


def _check_columns(runs: pd.DataFrame, metrics: list[str] | tuple[str, ...]) -> None:
    missing = [c for c in ("method", *CELL, *metrics) if c not in runs.columns]
    if missing:
        raise ValueError(
            f"runs table lacks column(s) {', '.join(missing)}; "
            f"it has {', '.join(map(str, runs.columns))}"
        )


def _cells(runs: pd.DataFrame, method: str, metric: str) -> pd.DataFrame:
    """One method's (seed, order, metric) rows; a cell that appears twice is an error."""
    rows = runs.loc[runs["method"] == method, [*CELL, metric]]
    dup = rows.duplicated(list(CELL), keep=False)
    if dup.any():
        seed, order = rows.loc[dup, list(CELL)].iloc[0]
        raise ValueError(
            f"method {method!r} has more than one run for cell seed={seed}, "
            f"order={order!r}; a cell must be run once per method to be paired"
        )
    return rows


def paired_differences(runs: pd.DataFrame, method: str, baseline: str, metric: str) -> np.ndarray:
    """The differences ``method - baseline`` of ``metric`` on each cell both methods ran.

    Cells run by only one of them are ignored, and so are cells where either value is nan
    (the metric is undefined there, for example BWT with one site). The result is sorted by
    (seed, order), so that what is computed from it does not depend on the row order of ``runs``.
    """
    _check_columns(runs, [metric])
    a = _cells(runs, method, metric)
    b = _cells(runs, baseline, metric)
    both = a.merge(b, on=list(CELL), suffixes=("_m", "_b")).sort_values(list(CELL))
    diffs = both[f"{metric}_m"].to_numpy(dtype=float) - both[f"{metric}_b"].to_numpy(dtype=float)
    return diffs[~np.isnan(diffs)]


def bootstrap_ci(
    diffs: np.ndarray, level: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``diffs``, deterministic in ``seed``.

    With one difference the interval is that value; with none it is (nan, nan).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: {level!r} is out of range; expected 0 < level < 1")
    if n_boot < 1:
        raise ValueError(f"n_boot: {n_boot!r} is out of range; expected n_boot >= 1")
    diffs = np.asarray(diffs, dtype=float).ravel()
    if diffs.size == 0:
        return math.nan, math.nan
    if diffs.size == 1:
        return float(diffs[0]), float(diffs[0])
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(n_boot, diffs.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def sign_test_p(diffs: np.ndarray) -> float:
    """Exact two-sided sign-test p-value of ``diffs`` against a median of zero.

    Zero differences are dropped (the usual convention); with no non-zero difference p = 1.
    """
    diffs = np.asarray(diffs, dtype=float).ravel()
    wins, losses = int((diffs > 0).sum()), int((diffs < 0).sum())
    if wins + losses == 0:
        return 1.0
    return float(min(1.0, binomtest(wins, wins + losses, 0.5, alternative="two-sided").pvalue))


def paired_table(
    runs: pd.DataFrame, metrics: list[str] | tuple[str, ...], baseline: str | None = None
) -> pd.DataFrame:
    """Paired differences of every method against every other one (or against ``baseline``).

    One row per ordered pair (method, baseline) with method != baseline and per metric, with the
    columns of :data:`PAIRED_COLUMNS`: the number of shared cells, the cells where the method is
    ahead (``wins``), the mean difference, its bootstrap 95 % CI and the sign-test p-value.
    Pairs that share no cell are left out. Methods appear in the order of ``runs``.
    """
    _check_columns(runs, metrics)
    methods = list(pd.unique(runs["method"]))
    if baseline is not None and baseline not in methods:
        raise ConfigError(
            f"baseline {baseline!r} is not among the compared methods; "
            f"expected one of {', '.join(map(str, methods))}"
        )
    bases = methods if baseline is None else [baseline]
    rows = []
    for method in methods:
        for base in bases:
            if method == base:
                continue
            for metric in metrics:
                diffs = paired_differences(runs, method, base, metric)
                if diffs.size == 0:
                    continue
                low, high = bootstrap_ci(diffs)
                rows.append(
                    {
                        "method": method,
                        "baseline": base,
                        "metric": metric,
                        "cells": int(diffs.size),
                        "wins": int((diffs > 0).sum()),
                        "mean_diff": float(diffs.mean()),
                        "ci_low": low,
                        "ci_high": high,
                        "p_value": sign_test_p(diffs),
                    }
                )
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))
