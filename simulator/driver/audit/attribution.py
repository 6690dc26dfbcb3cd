"""The attribution test's verdict from the sites' detector scores (pure; no site is asked here)."""

from __future__ import annotations

from typing import Any

import numpy as np


def attribution_summary(S: np.ndarray, order: list[str]) -> dict[str, Any]:
    """``S[d, k]``: the mean score the detector of site ``d`` gave the replay of site ``k`` (sites
    in ``order``); each replay set is attributed to the detector that scores it highest.

    Sites return only these means (never a score per image), so the test is made per set.
    """
    pred = S.argmax(0)
    return {
        "set_accuracy": float(np.mean(pred == np.arange(len(order)))),
        "chance": 1.0 / len(order),
        "attributed_to": {s: order[int(pred[k])] for k, s in enumerate(order)},
        "mean_scores": {
            d: {s: float(S[i, k]) for k, s in enumerate(order)} for i, d in enumerate(order)
        },
    }
