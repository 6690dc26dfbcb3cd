"""The meta-gradient math shared by PGA (``smg``, its ablations, ``pga_exact``, ``pga_sym``,
``smd_replay_matched``) and ``mldg``.

What follows the SMG-Learning paper's description: two alignment goals trained together with
synthetic replay, "orientational gradient alignment" towards previous sites
(memorizability) and "arbitrary gradient alignment" between domains (generalizability),
each turned into a meta-objective by a first-order Taylor expansion.

What is this project's derivation (the paper's equations are not public to us):
let L_c be the loss on a current-site batch, L_k on a replay batch of earlier site k,
and g = the gradient of a loss. The alignment objective is

    L_c + mean_k L_k - beta_o mean_k <sg(g_c), g_k>_P
        + lambda_gen (L_A + L_B - beta_a <sg(g_A), g_B>_P)

where sg() holds the leading gradient fixed ("direction fixed: current -> earlier";
for the arbitrary term, group A leads group B) and <.,.>_P is the inner product in the
optimiser's metric (below). With the Taylor identity
L_B(theta - d) = L_B - <d, g_B> + O(|d|^2), the gradient of each term equals, up to
O(|d|^2), the first-order gradient (no backpropagation through the inner step, as in
first-order MLDG) of

    J_mem = L_c(theta) + mean_k L_k(theta_m),   theta_m = theta - d(g_c)
    J_gen = L_A(theta) + L_B(theta_g),          theta_g = theta - d(g_A)

(the ablations ``smg_mem`` and ``smg_gen`` keep both objectives and evaluate one meta-test at
theta instead: ``Roles.shift_gen`` / ``Roles.shift_mem`` off)

with A, B a random split of the available domains (current + replayed sites), drawn
again every step; at stage 1, with no replay, A and B are two differently
style-augmented views of the current batch (simulated domain shift). Each step takes
the gradient of J_mem + lambda_gen * J_gen. Losses over several domains are averaged
(L_A is the mean of A's domain losses), so the step size does not grow with the number
of earlier sites.

Inner step: the optimiser's own step for the leading gradient, scaled by the lookahead,

    d(g) = s * P g,   P = diag(1 / (sqrt(v') + eps)),   rms(d) = lookahead * rms(Adam's step for g),

with v' Adam's bias-corrected second moment updated with g as if g were this step's gradient
(not stored), and "Adam's step for g" the parameter change Adam would make now for g
(:meth:`simulator.optim.Adam.preview`). The direction P g is the preconditioned gradient, so
the inner step moves the parameters the way the optimiser moves them, and its length is a
multiple of the optimiser's actual step: lookahead 1 is as long as one outer step at any point
of training (``inner_over_outer`` measures it; Adam's early steps are several times lr, so a
fixed length lookahead * lr would be about four outer steps early and less later). P and s
are detached and held constant. With the preconditioner the Taylor identity becomes
L_B(theta - s P g_A) = L_B - s <g_A, g_B>_P + O(|d|^2), <a, b>_P = sum_i P_i a_i b_i: the
alignment objective's inner products are taken in the optimiser's metric, with weight
beta = s, the scalar the first-order step uses.

Two exact objectives, each differentiated by double backpropagation
(:func:`server.methods.exact_gradient.alignment_gradient`):

* stop-gradient (``pga_exact``): the objective above, the one first-order ``smg``
  approximates; the difference between the two gradients is O(lookahead^2);
* symmetric (``pga_sym``): the same without sg(), so the inner products pull both
  gradients towards each other; no first-order method approximates it (the Hessian of
  the leading loss enters).

Every gradient is assembled from one forward/backward pass per domain at theta, reused
for the plain terms, the leading gradients and the alignment statistics, plus one pass
per meta-test domain at theta_m and theta_g. ``plain`` is the same step with the
meta-test losses evaluated at theta (lookahead 0): ``smd_replay_matched`` steps along
it, and ``align_rel_change`` measures how far the meta terms move the update from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.func import functional_call

from server.methods.inner_step import (
    Grads,
    Inner,
    InnerStep,
    as_inner,
    rms,
)
from simulator.method import HParam
from simulator.optim import Adam
from simulator.segmentation import seg_loss, seg_loss_per_image, seg_loss_weighted

Pair = tuple[torch.Tensor, torch.Tensor]

LOOKAHEAD = HParam(
    "lookahead",
    0.1,
    lo=0.0,
    help="inner step in optimiser steps: theta' = theta - d, d along Adam's preconditioned "
    "leading gradient with rms(d) = lookahead * rms(Adam's step for it) (1: one outer step; "
    "0.1 chosen on the tuning cells, docs/compare/tuning/)",
)
LAMBDA_GEN = HParam(
    "lambda_gen", 1.0, lo=0.0, help="weight of the generalizability objective J_gen"
)


@dataclass(frozen=True)
class Roles:
    """Which domain of a step (indices into its domain list) plays which part of the objective.

    ``current``: L_c, always a plain term (None: no L_c, as in MLDG). ``replay``: the replayed
    domains (J_mem's meta-test when ``use_mem``; always used for ``align_cos_mem``).
    ``group_a``/``group_b``: the split of J_gen (when ``use_gen``; otherwise only logged).
    ``shift_mem``/``shift_gen``: whether J_mem's / J_gen's meta-test losses are evaluated at the
    lookahead point (off: at theta, the plain term; the ablations switch one off).
    """

    current: int | None
    replay: tuple[int, ...] = ()
    group_a: tuple[int, ...] = ()
    group_b: tuple[int, ...] = ()
    use_mem: bool = True
    use_gen: bool = True
    lambda_gen: float = 1.0
    shift_mem: bool = True
    shift_gen: bool = True

    def __post_init__(self) -> None:
        if self.replay and self.current is None:
            raise ValueError("replayed domains need a current domain to lead the inner step")
        if self.use_gen and not (self.group_a and self.group_b):
            raise ValueError("J_gen needs two non-empty groups")

    @property
    def mem_active(self) -> bool:
        return self.use_mem and bool(self.replay)

    @property
    def shifted(self) -> bool:
        """Whether any meta-test of the step is evaluated away from theta."""
        return (self.mem_active and self.shift_mem) or (self.use_gen and self.shift_gen)


@dataclass
class PGAGradient:
    """One step's gradient, its meta-free counterpart and the per-domain gradients it reused."""

    grads: Grads  # the direction handed to the optimiser
    plain: Grads  # the same terms with the meta-test losses at theta
    domain_grads: list[Grads]  # per domain, at theta
    inner_rms: float  # RMS of the inner displacement (mean over those taken; 0: none)
    logs: dict[str, float] = field(default_factory=dict)


class _Functional:
    """Loss and gradients of the model at arbitrary parameter values."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def params(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def loss(self, params: dict[str, torch.Tensor], pair: Pair) -> torch.Tensor:
        x, y = pair
        return seg_loss(functional_call(self.model, params, (x,)), y)

    def mean_loss(self, params: dict[str, torch.Tensor], pairs: list[Pair]) -> torch.Tensor:
        """The mean of the domains' losses, in one pass over their concatenated batches.

        Every image of domain k weighs 1 / (K n_k), so the result equals the mean of the K
        per-domain losses (the network treats each image alone: GroupNorm, no batch statistics).
        """
        if len(pairs) == 1:
            return self.loss(params, pairs[0])
        x = torch.cat([p[0] for p in pairs])
        y = torch.cat([p[1] for p in pairs])
        w = torch.cat(
            [
                torch.full(
                    (len(p[0]),), 1.0 / (len(pairs) * len(p[0])), dtype=x.dtype, device=x.device
                )
                for p in pairs
            ]
        )
        return seg_loss_weighted(functional_call(self.model, params, (x,)), y, w)

    def weighted_loss(
        self, params: dict[str, torch.Tensor], pairs: list[Pair], weights: list[float]
    ) -> tuple[torch.Tensor, list[float]]:
        """sum_d weights[d] * L_d in one pass over the domains' concatenated batches, and each L_d.

        L_d is domain d's mean loss (the network treats each image alone, so one pass over the
        concatenation gives every domain's loss and the weighted sum's gradient at once).
        """
        x = torch.cat([p[0] for p in pairs]) if len(pairs) > 1 else pairs[0][0]
        y = torch.cat([p[1] for p in pairs]) if len(pairs) > 1 else pairs[0][1]
        per = seg_loss_per_image(functional_call(self.model, params, (x,)), y)
        w = torch.cat(
            [
                torch.full((len(p[0]),), wd / len(p[0]), dtype=per.dtype, device=per.device)
                for p, wd in zip(pairs, weights, strict=True)
            ]
        )
        bounds = [0]
        for p in pairs:
            bounds.append(bounds[-1] + len(p[0]))
        flat = per.detach()
        losses = [float(flat[a:b].mean()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return (per * w).sum(), losses

    def grad(
        self, loss: torch.Tensor, params: dict[str, torch.Tensor], create_graph: bool = False
    ) -> Grads:
        return list(torch.autograd.grad(loss, list(params.values()), create_graph=create_graph))

    def displaced(
        self, params: dict[str, torch.Tensor], lead: Grads, inner: Inner
    ) -> dict[str, torch.Tensor]:
        """theta - scale * P g as new leaves (first order: no graph through the inner step)."""
        return {
            n: (p.detach() - inner.scale * u.detach()).requires_grad_(True)
            for (n, p), u in zip(params.items(), inner.direction(lead), strict=True)
        }


def _mean(grads: list[Grads]) -> Grads:
    return [sum(parts) / len(grads) for parts in zip(*grads, strict=True)]


def _dot(a: Grads, b: Grads) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def _combine(
    roles: Roles, g: list[Grads], mem: Grads | None, g_a: Grads | None, b: Grads | None
) -> Grads:
    """g_c + mem + lambda_gen (g_A + b), ``mem`` and ``b`` being domain means: one order of
    summation."""
    out = [torch.zeros_like(t) for t in g[0]]
    terms: list[tuple[float, Grads]] = []
    if roles.current is not None:
        terms.append((1.0, g[roles.current]))
    if mem is not None:
        terms.append((1.0, mem))
    if g_a is not None:
        terms.append((roles.lambda_gen, g_a))
        if b is not None:
            terms.append((roles.lambda_gen, b))
    return weighted_sum(terms, out)


def weighted_sum(terms: list[tuple[float, Grads]], out: Grads | None = None) -> Grads:
    """sum_i w_i g_i over ``(w_i, g_i)`` terms, in their order (into ``out`` when given)."""
    out = [torch.zeros_like(t) for t in terms[0][1]] if out is None else out
    for w, grads in terms:
        for o, t in zip(out, grads, strict=True):
            o.add_(t.detach(), alpha=w)
    return out


def _per_domain(f: _Functional, theta: dict, doms: list[Pair], create_graph: bool = False):
    losses, grads = [], []
    for pair in doms:
        loss = f.loss(theta, pair)
        losses.append(loss)
        grads.append(f.grad(loss, theta, create_graph=create_graph))
    return losses, grads


def _loss_logs(roles: Roles, losses) -> dict[str, float]:
    """The step's loss logs from per-domain losses (a list, or a dict of the domains a step passed
    through: a mean that needs a domain not among them is not logged)."""
    have = set(range(len(losses))) if isinstance(losses, list) else set(losses)

    def mean(idx) -> float | None:
        if not idx or not set(idx) <= have:
            return None
        return sum(float(torch.as_tensor(losses[i]).detach()) for i in idx) / len(idx)

    parts = {
        "loss_current": mean((roles.current,) if roles.current is not None else ()),
        "loss_replay": mean(roles.replay),
        "loss_gen_a": mean(roles.group_a if roles.use_gen else ()),
    }
    return {k: v for k, v in parts.items() if v is not None}


def first_order_gradient(
    model: torch.nn.Module, doms: list[Pair], roles: Roles, step: InnerStep | float
) -> PGAGradient:
    """Gradient of J_mem + lambda_gen J_gen, first order, with the inner step rule ``step``.

    ``step``: :class:`AdamStep` (the methods), or a number, a fixed RMS length (:class:`FixedStep`).
    A meta-test not shifted (``roles.shift_mem`` / ``shift_gen`` off, or the rule ``off``) is
    evaluated at theta: the plain term, with no inner pass. Per-domain gradients at theta are
    computed once and reused; each meta-test is one pass over its domains' concatenated batches.
    """
    inner_step = as_inner(step)
    f = _Functional(model)
    theta = f.params()
    losses, g = _per_domain(f, theta, doms)
    logs = _loss_logs(roles, losses)
    mem_theta = _mean([g[k] for k in roles.replay]) if roles.mem_active else None
    g_a = _mean([g[i] for i in roles.group_a]) if roles.use_gen else None
    b_theta = _mean([g[i] for i in roles.group_b]) if roles.use_gen else None
    plain = _combine(roles, g, mem_theta, g_a, b_theta)
    mem, b, shifts = mem_theta, b_theta, []

    def meta_test(lead: Grads, idx: tuple[int, ...], key: str, shift: bool) -> Grads | None:
        inner = inner_step(lead) if shift and not inner_step.off else None
        if inner is not None:
            shifts.append(inner.length)
        if inner is None or inner.scale == 0:  # theta' = theta: the plain terms hold it
            logs[key] = float(sum(float(losses[i].detach()) for i in idx) / len(idx))
            return None
        shifted = f.displaced(theta, lead, inner)
        loss = f.mean_loss(shifted, [doms[i] for i in idx])
        logs[key] = float(loss.detach())
        return f.grad(loss, shifted)

    if mem_theta is not None:
        mem = (
            meta_test(g[roles.current], roles.replay, "loss_mem_meta", roles.shift_mem) or mem_theta
        )
    if g_a is not None:
        b = meta_test(g_a, roles.group_b, "loss_gen_meta", roles.shift_gen) or b_theta
    grads = plain if (mem is mem_theta and b is b_theta) else _combine(roles, g, mem, g_a, b)
    return PGAGradient(
        grads=grads,
        plain=plain,
        domain_grads=g,
        inner_rms=sum(shifts) / len(shifts) if shifts else 0.0,
        logs=logs,
    )


def apply_gradient(model: torch.nn.Module, opt: Adam, grads: Grads) -> float:
    """One optimiser step along ``grads``; returns the RMS of the parameter change it made."""
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.detach()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return rms([p.detach() - b for p, b in zip(params, before, strict=True)])
