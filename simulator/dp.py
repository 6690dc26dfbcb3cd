"""DP-SGD's pieces shared by a site's DP prompt tuning, its DP visit training and the audit.

* :func:`poisson_cases`: Poisson sampling of cases at rate q (each case drawn independently),
  then one random slice of each drawn case, so a case adds at most one example to a step;
* :class:`PrivateMean`: the per-case gradients of a step clipped to norm ``clip`` each, summed,
  Gaussian noise of standard deviation ``sigma * clip`` added, divided by the expected batch
  ``q * cases``: the only form in which a DP method sees its private data's gradient;
* :func:`per_case_grads`: per-case gradients of a loss by ``torch.func`` (one vectorised
  backward pass);
* the accountant (Opacus's RDP accountant): the noise multiplier for a target epsilon, the
  epsilon spent, and the composition of several mechanisms on the same data.

The randomness (sampling and noise) always comes from a generator the site derives from its
own secret, never from a request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

Grads = list[torch.Tensor]


@functools.lru_cache(maxsize=256)
def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest sigma whose ``steps`` steps at ``sample_rate`` spend at most ``epsilon`` at
    ``delta`` (a search of the accountant, about a second; kept per process)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant="rdp",
            epsilon_tolerance=0.005,
        )
    )


def spent_epsilon(sigma: float, sample_rate: float, steps: int, delta: float) -> float:
    """The epsilon that ``steps`` DP-SGD steps of noise ``sigma`` at ``sample_rate`` spend at
    ``delta``."""
    return composed_epsilon([(sigma, sample_rate, steps)], delta)


def composed_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """The epsilon at ``delta`` of several subsampled Gaussian mechanisms on the same data,
    ``(sigma, sample_rate, steps)`` each, composed in RDP (Opacus's RDP accountant)."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history if n > 0]
    if not acc.history:
        return 0.0
    return float(acc.get_epsilon(delta))


def poisson_cases(cases: list[np.ndarray], q: float, gen: torch.Generator) -> list[int]:
    """Poisson sampling of cases at rate ``q``, then one random slice of each drawn case (indices
    into the slices)."""
    drawn = (torch.rand(len(cases), generator=gen) < q).nonzero().flatten().tolist()
    return [int(cases[c][int(torch.randint(len(cases[c]), (1,), generator=gen))]) for c in drawn]


def case_groups(case_ids: np.ndarray) -> list[np.ndarray]:
    """The slices of each case (the privacy unit), in case order."""
    return [np.flatnonzero(case_ids == c) for c in np.unique(case_ids)]


@dataclass
class PrivateMean:
    """The DP-SGD estimate of a private batch's mean gradient; counts the queries it answers.

    ``sigma`` is the noise multiplier of one query: a step that asks k queries of the same sample
    gets ``k ** 0.5`` times the step's multiplier from the site (the k clipped per-case vectors
    together have norm at most ``k ** 0.5 * clip``).
    """

    clip: float
    sigma: float
    expected: float
    generator: torch.Generator
    queries: int = 0

    def __call__(self, per_case: Grads) -> Grads:
        """sum_i clip(g_i) + N(0, (sigma clip)^2), over ``expected``; ``per_case`` holds one
        tensor per parameter, the cases along its first axis (none: the noise alone)."""
        self.queries += 1
        n = per_case[0].shape[0]
        if n:
            sq = sum(g.reshape(n, -1).double().pow(2).sum(1) for g in per_case)
            factor = (self.clip / (sq.sqrt() + 1e-12)).clamp(max=1.0)
            sums = [
                (g * factor.to(g.dtype).view(n, *([1] * (g.dim() - 1)))).sum(0) for g in per_case
            ]
        else:
            sums = [torch.zeros(g.shape[1:], dtype=g.dtype, device=g.device) for g in per_case]
        out = []
        for s in sums:  # noise drawn on the CPU stream of the site's generator, then moved
            noise = torch.randn(s.shape, generator=self.generator, dtype=torch.float32)
            out.append((s + (self.sigma * self.clip) * noise.to(s.device, s.dtype)) / self.expected)
        return out


class DPSampler(Protocol):
    """What a visit under DP needs from the site: each step's Poisson sample, and the private
    gradient its losses go through."""

    private: PrivateMean

    def draw(self) -> list[int]: ...


def per_case_grads(
    case_loss: Callable[..., torch.Tensor], params: dict[str, torch.Tensor], *inputs: torch.Tensor
) -> Grads:
    """The gradient of ``case_loss(params, *one_case_inputs)`` for every case, one tensor per
    parameter with the cases along the first axis (empty inputs: zero-length tensors)."""
    from torch.func import grad, vmap

    n = inputs[0].shape[0]
    if n == 0:
        return [torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device) for p in params.values()]
    detached = {k: p.detach() for k, p in params.items()}
    g = vmap(grad(case_loss), in_dims=(None, *([0] * len(inputs))))(detached, *inputs)
    return [g[k] for k in params]
