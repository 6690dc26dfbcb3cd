"""Differentially private training during a visit (``privacy.dp_epsilon`` in model mode).

The model travels to the site, trains there and returns: under DP every gradient of a loss on
the site's images that the step uses is a DP-SGD query (:class:`simulator.dp.PrivateMean`):

* sampling: each step draws every case independently with probability ``q = batch / cases``
  (Poisson sampling, which the accountant assumes) and one random slice of each drawn case, from
  a generator keyed by the site's secret over the visit's request;
* per-case gradients (``torch.func``) clipped to ``dp_train_clip``, summed, Gaussian noise of
  standard deviation ``sigma * clip`` added, divided by the expected batch ``q * cases``;
* a method whose step asks k such queries of one sample (``smg`` at its first visit: J_gen's
  leading view, then the step) gets ``sigma * sqrt(k)`` on each: the k clipped vectors of a case
  have norm at most ``sqrt(k) * clip`` together, so the step is one Gaussian mechanism of
  multiplier ``sigma``;
* ``sigma`` is calibrated before the visit, by Opacus's RDP accountant, so that the visit's steps
  spend the site's training share of ``dp_epsilon`` at half of ``dp_delta``; the prompt (tuned
  with its own DP-SGD) gets the rest at the other half, so the site's total over the run is
  (``dp_epsilon``, ``dp_delta``) by composition; the audit also composes both in RDP.

Everything else the visit computes from private data stays in the site: no loss, no gradient
statistic leaves; the reply carries the weights (post-processing of the noisy steps), the
privacy parameters, and ``inner_over_outer`` (a ratio of two post-processed steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from simulator.dp import PrivateMean, case_groups, noise_multiplier, poisson_cases, spent_epsilon

if TYPE_CHECKING:
    from sites.settings import SiteSettings


@dataclass(frozen=True)
class Budget:
    """How a site under DP splits its (epsilon, delta) between the prompt and visit training."""

    epsilon: float
    delta: float
    train_share: float

    @property
    def split(self) -> bool:
        return self.train_share > 0

    @property
    def prompt(self) -> tuple[float, float]:
        """The prompt's (epsilon, delta)."""
        if not self.split:
            return self.epsilon, self.delta
        return self.epsilon * (1 - self.train_share), self.delta / 2

    @property
    def train(self) -> tuple[float, float]:
        """The visit training's (epsilon, delta)."""
        return self.epsilon * self.train_share, self.delta / 2


def site_budget(own: SiteSettings, cases: int) -> Budget:
    """The site's budget from its own settings (``own``: :class:`sites.settings.SiteSettings`);
    a delta of 0 means 1 / (10 cases)."""
    delta = own.dp_delta if own.dp_delta > 0 else 1.0 / (10 * cases)
    return Budget(own.dp_epsilon, delta, own.dp_train_share)


@dataclass
class DPTraining:
    """One visit's DP-SGD mechanism: the sampling, the per-query noise and its accounting."""

    cases: list[np.ndarray]
    sample_rate: float
    steps: int
    queries: int
    sigma: float
    clip: float
    delta: float
    private: PrivateMean
    #: the site's whole delta (the data set's ledger states its total at it)
    budget_delta: float = 0.0
    #: the data set's epsilon with this visit, over every run (:mod:`sites.dp_budget`)
    dataset_epsilon: float = 0.0

    def draw(self) -> list[int]:
        """This step's Poisson sample: one slice index per drawn case."""
        return poisson_cases(self.cases, self.sample_rate, self.private.generator)

    def logs(self) -> dict[str, float]:
        """The privacy parameters of the visit and the epsilon it spent (the accountant's)."""
        return {
            "dp_train_epsilon": spent_epsilon(self.sigma, self.sample_rate, self.steps, self.delta),
            "dp_train_delta": self.delta,
            "dp_train_noise_multiplier": self.sigma,
            "dp_train_sample_rate": self.sample_rate,
            "dp_train_steps": self.steps,
            "dp_train_queries": self.queries,
            "dp_train_cases": len(self.cases),
            "dp_train_clip": self.clip,
            "dp_dataset_epsilon": self.dataset_epsilon,
        }


def plan_dp_training(
    own: SiteSettings,
    case_ids: np.ndarray,
    steps: int,
    batch: int,
    queries: int,
    gen: torch.Generator,
) -> DPTraining:
    """Calibrate a visit of ``steps`` steps at batch ``batch`` whose steps ask ``queries``
    private queries each, within the site's training share; ``gen`` keyed by the site's secret."""
    cases = case_groups(case_ids)
    budget = site_budget(own, len(cases))
    eps, delta = budget.train
    if eps <= 0:
        raise ValueError("DP training at this site: its training share of dp_epsilon is 0")
    if steps < 1:
        raise ValueError("DP training needs at least one step (the accountant counts steps)")
    q = min(1.0, batch / len(cases))
    sigma = noise_multiplier(eps, delta, q, steps)
    per_query = sigma * queries**0.5
    private = PrivateMean(own.dp_train_clip, per_query, q * len(cases), gen)
    return DPTraining(
        cases, q, steps, queries, sigma, own.dp_train_clip, delta, private, budget.delta
    )
