"""Cumulative joint training on pooled real data: a NON-PRIVATE upper reference."""

from __future__ import annotations

from server.methods.er_real import ERReal
from simulator.method import HParam


class Joint(ERReal):
    """Joint training on all sites' real data pooled so far (non-private upper bound).

    At each stage the model trains on the current site and on the pooled real train
    pairs of every site visited before (cumulative joint training, the usual upper
    bound of continual learning). The pool travels with the model, so every real
    image leaves its site: the run needs ``--allow-non-private`` and the audit fails.
    """

    name = "joint"
    dp_refusal = "it trains on real images of earlier sites (non-private by design)"
    relative_cost = 1.1
    private = False
    hyperparameters = (
        HParam("buffer_per_site", 100000, lo=1, hi=10000000, help="real pairs kept per site"),
    )
