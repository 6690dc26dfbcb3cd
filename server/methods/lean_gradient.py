"""The PGA step without per-domain gradients: the same update as
:func:`server.methods.meta_gradient.first_order_gradient` (equal to float rounding) in fewer passes,
for the steps that log no alignment statistics (``stats_every``)."""

from __future__ import annotations

import torch

from server.methods.inner_step import InnerStep, as_inner
from server.methods.meta_gradient import (
    Grads,
    Pair,
    PGAGradient,
    Roles,
    _Functional,
    _loss_logs,
    weighted_sum,
)


def _plain_weights(roles: Roles, n: int) -> list[float]:
    """Each domain's weight in the plain objective L_c + mean_k L_k + lambda_gen (L_A + L_B)."""
    w = [0.0] * n
    if roles.current is not None:
        w[roles.current] += 1.0
    if roles.mem_active:
        for k in roles.replay:
            w[k] += 1.0 / len(roles.replay)
    if roles.use_gen:
        for group in (roles.group_a, roles.group_b):
            for i in group:
                w[i] += roles.lambda_gen / len(group)
    return w


def lean_gradient(
    model: torch.nn.Module, doms: list[Pair], roles: Roles, step: InnerStep | float
) -> PGAGradient:
    """The update of :func:`first_order_gradient` (equal up to float rounding) with fewer passes.

    No per-domain gradient is kept, so the step logs no alignment statistics: the plain step
    (no meta-test shifted, or the inner-step rule ``off``) is one weighted pass over all domains;
    the meta step takes one
    pass for the current site (its gradient leads J_mem's inner step), one for the rest of
    group A (with it, J_gen's lead), and the two meta-test passes, whatever the number of
    replayed sites. ``plain`` is not computed (an empty list) and ``domain_grads`` is empty.
    Losses that need a pass the step does not take (``loss_replay`` at theta) are not logged.
    """
    inner_step = as_inner(step)
    f = _Functional(model)
    theta = f.params()
    if not roles.shifted or inner_step.off:
        w = _plain_weights(roles, len(doms))
        idx = [i for i, wi in enumerate(w) if wi != 0]
        loss, per = f.weighted_loss(theta, [doms[i] for i in idx], [w[i] for i in idx])
        grads = f.grad(loss, theta)
        return PGAGradient(
            grads=grads,
            plain=grads,
            domain_grads=[],
            inner_rms=0.0,
            logs=_loss_logs(roles, dict(zip(idx, per, strict=True))),
        )
    losses: dict[int, float] = {}
    terms: list[tuple[float, Grads]] = []
    g_c = None
    if roles.current is not None:
        loss_c = f.loss(theta, doms[roles.current])
        losses[roles.current] = float(loss_c.detach())
        g_c = f.grad(loss_c, theta)
        terms.append((1.0, g_c))
    g_a = None
    if roles.use_gen:
        rest = [i for i in roles.group_a if i != roles.current]
        n_a = len(roles.group_a)
        parts: list[tuple[float, Grads]] = []
        if rest:
            loss_rest, per = f.weighted_loss(
                theta, [doms[i] for i in rest], [1.0 / n_a] * len(rest)
            )
            losses.update(zip(rest, per, strict=True))
            parts.append((1.0, f.grad(loss_rest, theta)))
        if roles.current in roles.group_a:
            parts.append((1.0 / n_a, g_c))
        g_a = weighted_sum(parts)
        terms.append((roles.lambda_gen, g_a))
    logs = _loss_logs(roles, losses)
    logs.pop(
        "loss_replay", None
    )  # present only when the split put every replayed site in A: not a fair mean
    shifts = []

    def meta_test(lead: Grads, idx: tuple[int, ...], key: str, shift: bool) -> Grads:
        inner = inner_step(lead) if shift else None
        if inner is not None:
            shifts.append(inner.length)
        at = f.displaced(theta, lead, inner) if inner is not None and inner.scale > 0 else theta
        loss = f.mean_loss(at, [doms[i] for i in idx])
        logs[key] = float(loss.detach())
        return f.grad(loss, at)

    if roles.mem_active:
        terms.append((1.0, meta_test(g_c, roles.replay, "loss_mem_meta", roles.shift_mem)))
    if g_a is not None:
        terms.append(
            (roles.lambda_gen, meta_test(g_a, roles.group_b, "loss_gen_meta", roles.shift_gen))
        )
    return PGAGradient(
        grads=weighted_sum(terms),
        plain=[],
        domain_grads=[],
        inner_rms=sum(shifts) / len(shifts) if shifts else 0.0,
        logs=logs,
    )
