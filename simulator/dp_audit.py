"""The statistics of a one-run privacy audit (Steinke, Nasr and Jagielski, "Privacy Auditing with
One (1) Training Run", NeurIPS 2023).

m canaries are each included in the private training set independently with probability 1/2;
after training, an auditor looks only at what was exported, guesses "in" or "out" for r of them
(abstaining on the rest) and is right v times. If the mechanism is (epsilon, delta)-DP, the
number of right guesses is dominated by Binomial(r, e^eps / (1 + e^eps)) up to a delta term
(their Theorem 3.1): P[V >= v] <= beta + alpha * delta * 2m, with beta = P[Binomial >= v] and
alpha the largest over i of P[v - i <= Binomial < v] / i. The lower bound on epsilon at
confidence c is the largest epsilon whose p-value is still below 1 - c: the mechanism is not
(epsilon, delta)-DP for any smaller epsilon, with that confidence.

With r guesses all right the bound cannot exceed log(q / (1 - q)) for q = (1 - c) ** (1 / r):
about 5.8 for r = 1,000 at 95 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v right of r guesses] for an (epsilon, delta)-DP mechanism over m canaries."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))
    alpha, acc = 0.0, 0.0
    for i in range(1, v + 1):
        acc += float(stats.binom.pmf(v - i, r, q))
        alpha = max(alpha, acc / i)
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon that v right guesses of r reject at ``confidence`` (0: none)."""
    level = 1.0 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < level:
        lo, hi = hi, hi * 2
    for _ in range(50):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < level:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class Guesses:
    """The auditor's guesses from scores (higher: more likely in), fixed before seeing the truth:
    "in" for the ``k_in`` highest, "out" for the ``k_out`` lowest, abstain on the rest."""

    k_in: int
    k_out: int

    def score(self, scores: np.ndarray, included: np.ndarray) -> tuple[int, int]:
        """(guesses made, guesses right)."""
        order = np.argsort(-np.asarray(scores), kind="stable")
        guess_in, guess_out = order[: self.k_in], order[len(order) - self.k_out :]
        right = int(np.sum(included[guess_in])) + int(np.sum(~included[guess_out]))
        return self.k_in + self.k_out, right
