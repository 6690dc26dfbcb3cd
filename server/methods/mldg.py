"""Meta-learning for domain generalisation, first order."""

from __future__ import annotations

from server.methods.alignment import alignment_logs, gram, inner_over_outer
from server.methods.domains import style_augment
from server.methods.inner_step import AdamStep
from server.methods.meta_gradient import (
    Roles,
    apply_gradient,
    first_order_gradient,
)
from server.methods.streams import method_generator
from simulator.method import Batch, HParam, Method, StageContext
from simulator.schemas import COSINE, LOSS, RATIO


class MLDG(Method):
    """MLDG (Li et al., AAAI 2018), first order, on simulated domains of the current site.

    With one real domain per visit, meta-train is the current batch and meta-test a
    style-augmented view of it (a simulated unseen site): the gradient of
    L_train(theta) + L_test(theta - d), first order (MLDG's beta = 1), with the inner step
    d = lookahead times the optimiser's own step for g_train (see
    :mod:`server.methods.meta_gradient`). No replay. The views come from the method's own
    random stream.
    """

    name = "mldg"
    dp_refusal = "its meta-test on a view of the private batch has no per-case DP form here"
    relative_cost = 2.7
    private = True
    log_names = {
        "loss": LOSS,
        "loss_meta_test": LOSS,
        "align_cos_gen": COSINE,
        "align_rel_change": RATIO,
        "inner_over_outer": RATIO,
    }
    hyperparameters = (
        HParam(
            "lookahead",
            1.0,
            lo=0.0,
            help="inner step in optimiser steps (mldg's own; not tuned with smg's)",
        ),
    )
    roles = Roles(
        current=None, group_a=(0,), group_b=(1,), use_mem=False, use_gen=True, lambda_gen=1.0
    )

    def begin_stage(self, ctx: StageContext) -> None:
        self.opt = self.adam()
        self.gen = method_generator(ctx)

    def update(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        doms = [(batch.x, batch.y), (style_augment(batch.x, self.gen), batch.y)]
        res = first_order_gradient(
            self.model, doms, self.roles, AdamStep(self.opt, float(self.hp["lookahead"]))
        )
        outer = apply_gradient(self.model, self.opt, res.grads)
        logs = {"loss": res.logs["loss_gen_a"], "loss_meta_test": res.logs["loss_gen_meta"]}
        logs.update(alignment_logs(res, self.roles, gram(res.domain_grads)))
        logs["inner_over_outer"] = inner_over_outer(res.inner_rms, outer)
        return logs
