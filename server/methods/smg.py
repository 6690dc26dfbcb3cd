"""SMG-Learning: Parallel Gradient Alignment (PGA) with SMD replay, and its two ablations.

The derivation of the two meta-objectives, the lookahead scaling of the inner step, and
which parts follow the paper are in :mod:`server.methods.meta_gradient`; the alignment
statistics every step logs are in :mod:`server.methods.alignment`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from server.methods.alignment import alignment_logs, cosine_summary, gram, inner_over_outer
from server.methods.domains import split, style_augment
from server.methods.dp_steps import dp_pga_gradient
from server.methods.inner_step import AdamStep, InnerStep
from server.methods.lean_gradient import lean_gradient
from server.methods.meta_gradient import (
    LAMBDA_GEN,
    LOOKAHEAD,
    Pair,
    PGAGradient,
    Roles,
    apply_gradient,
    first_order_gradient,
)
from server.methods.streams import method_generator
from simulator.dp import PrivateMean
from simulator.method import Batch, HParam, HValue, Method, StageContext
from simulator.schemas import COSINE, LOSS, RATIO, SIGNED, MetricRule, rules

REPLAY_SITES_PER_STEP = HParam(
    "replay_sites_per_step",
    0,
    lo=0,
    hi=1_000_000,
    help="earlier sites replayed per step, drawn from the method's own stream (0: all), "
    "so a step's cost stops growing with the stage",
)

GEN_LEAD = HParam(
    "gen_lead",
    "current",
    choices=("current", "random"),
    help="which group leads J_gen's inner step once earlier sites are replayed: current (the "
    "random split's group holding the current site; the current site is never a meta-test "
    "domain, and a step takes one pass less) or random (either group)",
)

STATS_EVERY = HParam(
    "stats_every",
    10,
    lo=1,
    hi=1_000_000,
    help="alignment statistics (per-domain gradients, cosines, align_rel_change) on every "
    "n-th step "
    "and the last step of a visit; the other steps take the same update with fewer passes "
    "(1: every step)",
)


class SMG(Method):
    """SMG-Learning: PGA (J_mem + lambda_gen J_gen, first order) with SMD replay.

    Synchronous Memorizability and Generalizability learning (the SMG-Learning paper):
    parallel orientational and arbitrary gradient alignment against replay from a
    Site-Modulated Diffusion model. See :mod:`server.methods.meta_gradient` for which
    parts follow the paper's description and which are this project's derivation.

    The domains of a step are the current site and the replayed sites (at stage 1 the
    current batch and two style views of it); their split and the views come from the
    method's own random stream (:func:`server.methods.streams.method_generator`).
    Subclasses evaluate a meta-test at theta instead of its lookahead point (``shift_mem``,
    ``shift_gen``: the weight-matched ablations and matched replay) or replace the gradient
    (``_gradient``); every plain term, view, weight and random draw stays the same.
    """

    name = "smg"
    relative_cost = 3.6
    private = True
    uses_replay = True
    hyperparameters = (LOOKAHEAD, LAMBDA_GEN, GEN_LEAD, REPLAY_SITES_PER_STEP, STATS_EVERY)
    log_names = {
        **rules(
            ("loss", "loss_current", "loss_replay", "loss_gen_a", "loss_mem_meta", "loss_gen_meta"),
            LOSS,
        ),
        "align_cos_mem": COSINE,
        "align_cos_gen": COSINE,
        "align_rel_change": RATIO,
        "inner_over_outer": RATIO,
        "align_mem": SIGNED,
        "align_gen": SIGNED,
    }

    @classmethod
    def summary_names(cls, domains: list[str]) -> dict[str, MetricRule]:
        """``cos/<a>/<b>`` for every two domains of a step: the visited site, the replayed sites,
        and at stage 1 the two style views."""
        names = [*domains, "view1", "view2"]
        return {f"cos/{a}/{b}": COSINE for a in names for b in names if a != b}

    #: False: J_mem's meta-test losses (replayed sites) are evaluated at theta, not theta_m
    shift_mem = True
    #: False: J_gen's meta-test losses (group B) are evaluated at theta, not theta_g
    shift_gen = True

    def begin_stage(self, ctx: StageContext) -> None:
        self.opt = self.adam()
        self.gen = method_generator(ctx)
        self.site = ctx.site
        self._last: tuple[list[str], torch.Tensor] | None = None
        self._steps, self._step = ctx.steps, 0

    def _stats_step(self) -> bool:
        """Whether this step computes the alignment statistics: every ``stats_every``-th step
        (the first included) and the visit's last step (whose cosines the stage summary shows)."""
        every = self._stats_every()
        return every <= 1 or self._step % every == 0 or self._step == self._steps - 1

    def _stats_every(self) -> int:
        return int(self.hp["stats_every"])

    def replay_sites_per_step(self) -> int:
        return int(self.hp["replay_sites_per_step"])

    def _replay(self, batch: Batch) -> dict[str, Pair]:
        """The replayed sites of this step: all, or ``replay_sites_per_step`` drawn at random."""
        k, names = int(self.hp["replay_sites_per_step"]), list(batch.replay)
        if 0 < k < len(names):
            keep = sorted(torch.randperm(len(names), generator=self.gen)[:k].tolist())
            names = [names[i] for i in keep]
        return {n: batch.replay[n] for n in names}

    def _plan(self, batch: Batch) -> tuple[list[str], list[Pair], Roles]:
        """Domain names, domain batches and their roles for one step."""
        replay = self._replay(batch)
        names, doms = [self.site, *replay], [(batch.x, batch.y), *replay.values()]
        pool = list(range(len(doms)))
        if not replay:
            # stage 1: two simulated sites from the current batch
            names += ["view1", "view2"]
            doms += [
                (style_augment(batch.x, self.gen), batch.y),
                (style_augment(batch.x, self.gen), batch.y),
            ]
            pool = [1, 2]
        a, b = split(len(pool), self.gen)
        if replay and self.hp.get("gen_lead", "current") == "current" and 0 in b:
            a, b = b, a  # the same draw; L_A + L_B, the plain terms, is symmetric in A and B
        roles = Roles(
            current=0,
            replay=tuple(range(1, 1 + len(replay))),
            group_a=tuple(pool[i] for i in a),
            group_b=tuple(pool[i] for i in b),
            lambda_gen=float(self.hp["lambda_gen"]),
            shift_mem=self.shift_mem,
            shift_gen=self.shift_gen,
        )
        return names, doms, roles

    def _inner(self) -> InnerStep:
        """The inner step: ``lookahead`` times the optimiser's own step for the leading gradient."""
        return AdamStep(self.opt, float(self.hp["lookahead"]))

    def _gradient(self, doms: list[Pair], roles: Roles, stats: bool = True) -> PGAGradient:
        """The step's gradient; ``stats=False``: the same update without per-domain gradients."""
        grad = first_order_gradient if stats else lean_gradient
        return grad(self.model, doms, roles, self._inner())

    def update(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        names, doms, roles = self._plan(batch)
        stats = self._stats_step()
        self._step += 1
        res = self._gradient(doms, roles, stats)
        outer = apply_gradient(self.model, self.opt, res.grads)
        logs = dict(res.logs)
        if res.domain_grads:
            G = gram(res.domain_grads)
            self._last = (names, G)
            logs.update(alignment_logs(res, roles, G))
        logs["inner_over_outer"] = inner_over_outer(res.inner_rms, outer)
        logs["loss"] = logs["loss_current"]
        return logs

    def stage_summary(self) -> dict[str, float]:
        """The last step's gradient cosine between every ordered pair of its domains."""
        return cosine_summary(*self._last) if self._last is not None else {}

    dp_refusal = ""

    @classmethod
    def dp_check(cls, hparams: Mapping[str, HValue]) -> str:
        if cls.dp_refusal:
            return cls.dp_refusal
        if hparams.get("gen_lead", "current") != "current":
            return (
                "gen_lead=random makes the current site a meta-test domain of J_gen, a second "
                "private query per step; use gen_lead=current"
            )
        return ""

    def dp_queries(self, has_replay: bool) -> int:
        """Two at the first visit when J_gen's meta-test is shifted (the leading view, then the
        step); one otherwise (:mod:`server.methods.dp_steps`)."""
        lookahead = float(self.hp.get("lookahead", 0.0))
        return 2 if not has_replay and self.shift_gen and lookahead > 0 else 1

    def dp_update(self, batch: Batch, private: PrivateMean) -> dict[str, float]:
        """The PGA step with every gradient on the site's cases a DP query."""
        self.model.train()
        _, doms, roles = self._plan(batch)
        self._step += 1
        res = dp_pga_gradient(self.model, doms, roles, self._inner(), private)
        outer = apply_gradient(self.model, self.opt, res.grads)
        return {"inner_over_outer": inner_over_outer(res.inner_rms, outer)}


class SMGMem(SMG):
    """Ablation of SMG-Learning keeping only the memorizability alignment.

    Weight-matched: every plain term, view and draw of ``smg``; J_gen's meta-test (group B) is
    evaluated at theta instead of its lookahead point, so only the generalizability alignment
    is dropped."""

    name = "smg_mem"
    relative_cost = 3.0
    shift_gen = False


class SMGGen(SMG):
    """Ablation of SMG-Learning keeping only the generalizability alignment.

    Weight-matched: every plain term, view and draw of ``smg``; J_mem's meta-test (the replayed
    sites) is evaluated at theta instead of its lookahead point, so only the memorizability
    alignment is dropped."""

    name = "smg_gen"
    relative_cost = 2.9
    shift_mem = False
