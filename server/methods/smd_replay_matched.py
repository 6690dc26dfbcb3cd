"""SMD replay matched to ``smg`` term for term, minus the meta terms: the fair ablation of PGA."""

from __future__ import annotations

from server.methods.inner_step import FixedStep, InnerStep
from server.methods.meta_gradient import (
    LAMBDA_GEN,
)
from server.methods.smg import REPLAY_SITES_PER_STEP, SMG, STATS_EVERY


class SMDReplayMatched(SMG):
    """``smg`` with its meta-test losses evaluated at theta instead of the shifted points.

    It trains on exactly smg's domains with smg's weighting, L_c + mean_k L_k +
    lambda_gen (L_A + L_B), on the same stage-1 style views and the same random draws
    (replayed-site sample, split, augmentation) from the same stream, so a paired
    difference against ``smg`` isolates the gradient alignment of the SMG-Learning paper's
    PGA from replay itself (generative replay, Shin et al., NeurIPS 2017). It takes no
    inner step, hence has no ``lookahead``; it logs the same alignment statistics
    (``align_rel_change`` and ``inner_over_outer`` are 0).
    """

    name = "smd_replay_matched"
    relative_cost = 1.8
    hyperparameters = (LAMBDA_GEN, REPLAY_SITES_PER_STEP, STATS_EVERY)
    shift_mem = False
    shift_gen = False

    def _inner(self) -> InnerStep:
        """No inner step (no ``lookahead``): both meta-tests are evaluated at theta."""
        return FixedStep(0.0)
