"""PGA by its explicit alignment objective, leading gradient held fixed: the reference for
``smg``."""

from __future__ import annotations

from server.methods.exact_gradient import alignment_gradient
from server.methods.meta_gradient import (
    LAMBDA_GEN,
    LOOKAHEAD,
    Pair,
    PGAGradient,
    Roles,
)
from server.methods.smg import GEN_LEAD, REPLAY_SITES_PER_STEP, SMG


class PGAExact(SMG):
    """PGA by its stop-gradient alignment objective, differentiated by double backpropagation.

    L_c + mean_k L_k - beta mean_k <sg(g_c), g_k>_P + lambda_gen (L_A + L_B - beta <sg(g_A),
    g_B>_P), with beta and P the scale and preconditioner of ``smg``'s inner step for the
    leading gradient (Adam's metric): the objective whose gradient first-order :class:`SMG`
    approximates to O(lookahead^2) (after the first-order MAML/MLDG argument of Finn et al.,
    ICML 2017, and Li et al., AAAI 2018). Same domains, random draws and hyper-parameters as
    ``smg``; it measures what the approximation saves and costs.
    """

    name = "pga_exact"
    relative_cost = 7.5
    dp_refusal = "its double back-propagation has no per-case DP form here"
    hyperparameters = (
        LOOKAHEAD,
        LAMBDA_GEN,
        GEN_LEAD,
        REPLAY_SITES_PER_STEP,
    )  # statistics on every step

    def _stats_every(self) -> int:
        """Double back-propagation yields every domain's gradient on every step anyway, so the
        statistics are computed on every step (no ``stats_every`` to set)."""
        return 1

    def _gradient(self, doms: list[Pair], roles: Roles, stats: bool = True) -> PGAGradient:
        return alignment_gradient(self.model, doms, roles, self._inner(), symmetric=False)
