"""The attribution test's verdict from the sites' detector scores (pure; no site is asked here)."""

from __future__ import annotations

from typing import Any

import numpy as np


def attribution_summary(S: np.ndarray, order: list[str]) -> dict[str, Any]:
    """``S[d, i]``: detector of site ``d`` scoring synthetic image ``i`` (the replay of every site in
    ``order``, the same number each); each image is attributed to the site whose detector scores it
    highest, each replay set to the detector with the highest mean score."""
    n = S.shape[1] // len(order)
    truth = np.repeat(np.arange(len(order)), n)
    pred = S.argmax(0)
    set_pred = [int(S[:, k * n:(k + 1) * n].mean(1).argmax()) for k in range(len(order))]
    return {
        "sample_accuracy": float((pred == truth).mean()),
        "set_accuracy": float(np.mean([p == k for k, p in enumerate(set_pred)])),
        "chance": 1.0 / len(order),
        "per_site_accuracy": {s: float((pred[truth == k] == k).mean()) for k, s in enumerate(order)},
        "mean_scores": {d: {s: float(S[i, k * n:(k + 1) * n].mean()) for k, s in enumerate(order)}
                        for i, d in enumerate(order)},
    }
