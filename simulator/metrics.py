"""Continual-learning metrics as pure functions of the evaluation matrix R.

``R`` has shape ``(T + 1, T)``: row 0 is the untrained model, row ``i`` is the
model after stage ``i``; column ``j`` is the ``j``-th site in visiting order.
Indices below are 1-based in visiting order (stage i visits the i-th site). A metric
that is undefined for the given ``T`` (for example BWT with one site) is ``nan``.
"""

from __future__ import annotations

import math

import numpy as np

METRIC_NAMES = ("Mem", "Gen", "Final", "BWT", "FWT", "Forgetting", "LA", "Retention")


def _check(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] + 1 or R.shape[1] < 1:
        raise ValueError(f"R must have shape (T+1, T) with T >= 1, got {R.shape}")
    return R


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def mem_per_stage(R: np.ndarray) -> list[float]:
    """Mean Dice over sites visited before stage i, for i = 1..T (nan at i = 1)."""
    R = _check(R)
    T = R.shape[1]
    return [_mean([R[i, j - 1] for j in range(1, i)]) for i in range(1, T + 1)]


def gen_per_stage(R: np.ndarray) -> list[float]:
    """Mean Dice over sites visited after stage i, for i = 1..T (nan at i = T)."""
    R = _check(R)
    T = R.shape[1]
    return [_mean([R[i, j - 1] for j in range(i + 1, T + 1)]) for i in range(1, T + 1)]


def mem(R: np.ndarray) -> float:
    """Memorizability: mean over stages i >= 2 of the mean Dice on earlier sites."""
    return _mean([v for v in mem_per_stage(R)[1:]])


def gen(R: np.ndarray) -> float:
    """Generalizability: mean over stages i <= T-1 of the mean Dice on later sites."""
    return _mean([v for v in gen_per_stage(R)[:-1]])


def final(R: np.ndarray) -> float:
    """Mean Dice over all sites after the last stage."""
    R = _check(R)
    return float(np.mean(R[-1]))


def bwt(R: np.ndarray) -> float:
    """Backward transfer: mean_{j<T} R[T][j] - R[j][j]; negative means forgetting."""
    R = _check(R)
    T = R.shape[1]
    return _mean([R[T, j - 1] - R[j, j - 1] for j in range(1, T)])


def fwt(R: np.ndarray) -> float:
    """Forward transfer: mean_{j>=2} R[j-1][j] - R[0][j]."""
    R = _check(R)
    T = R.shape[1]
    return _mean([R[j - 1, j - 1] - R[0, j - 1] for j in range(2, T + 1)])


def forgetting(R: np.ndarray) -> float:
    """Mean over j < T of the best Dice at stages 1..T-1 minus the final Dice.

    Row 0 (the untrained model) is excluded from the maximum, as in the usual
    definition (Chaudhry et al., 2018).
    """
    R = _check(R)
    T = R.shape[1]
    return _mean([float(np.max(R[1:T, j - 1])) - R[T, j - 1] for j in range(1, T)])


def learning_accuracy(R: np.ndarray) -> float:
    """Plasticity: mean over sites of the Dice on each site right after learning it, R[i][i]."""
    R = _check(R)
    T = R.shape[1]
    return _mean([R[i, i - 1] for i in range(1, T + 1)])


def retention(R: np.ndarray) -> float:
    """Mean over earlier sites j < T of the final Dice over the Dice right after learning j,
    R[T][j] / R[j][j] (sites never learned, R[j][j] = 0, are left out)."""
    R = _check(R)
    T = R.shape[1]
    return _mean([R[T, j - 1] / R[j, j - 1] for j in range(1, T) if R[j, j - 1] > 0])


def all_metrics(R: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`METRIC_NAMES` for one R."""
    return {
        "Mem": mem(R),
        "Gen": gen(R),
        "Final": final(R),
        "BWT": bwt(R),
        "FWT": fwt(R),
        "Forgetting": forgetting(R),
        "LA": learning_accuracy(R),
        "Retention": retention(R),
    }
