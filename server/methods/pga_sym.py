"""PGA by its symmetric alignment objective (no stop-gradient): a reference with no first-order
form."""

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


class PGASym(SMG):
    """PGA by the symmetric alignment objective, differentiated by double backpropagation.

    L_c + mean_k L_k - beta mean_k <g_c, g_k>_P + lambda_gen (L_A + L_B - beta <g_A, g_B>_P),
    beta and P the scale and preconditioner of ``smg``'s inner step for the leading gradient
    (detached), with no stop-gradient on either side of the inner products, so both gradients
    are pulled towards each other (the gradient-inner-product regulariser of Fish, Shi et al.,
    ICLR 2022, taken exactly; here between the SMG-Learning paper's site groups). The leading
    side's Hessian enters, so no first-order meta-step approximates it; it tells whether holding
    the lead fixed, as ``smg`` and ``pga_exact`` do, matters. Same domains, draws and
    hyper-parameters as ``smg``.
    """

    name = "pga_sym"
    relative_cost = 10.4
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
        return alignment_gradient(self.model, doms, roles, self._inner(), symmetric=True)
