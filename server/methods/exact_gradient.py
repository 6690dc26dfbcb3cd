"""The PGA alignment objectives taken exactly, by double backpropagation (``pga_exact``,
``pga_sym``): the references for the first-order step of :mod:`server.methods.meta_gradient`."""

from __future__ import annotations

import torch

from server.methods.inner_step import InnerStep, as_inner
from server.methods.meta_gradient import (
    Grads,
    Pair,
    PGAGradient,
    Roles,
    _combine,
    _dot,
    _Functional,
    _loss_logs,
    _mean,
    _per_domain,
)


def alignment_gradient(
    model: torch.nn.Module,
    doms: list[Pair],
    roles: Roles,
    step: InnerStep | float,
    symmetric: bool = False,
) -> PGAGradient:
    """Gradient of the explicit alignment objective, by double backpropagation.

    Each alignment term is -beta <g_lead, g_other>_P with beta and P the scalar and the
    preconditioner of the first-order step's inner step for the same leading gradient
    (``step``, as in :func:`first_order_gradient`; P, beta detached). ``symmetric=False``: the
    leading gradient is held fixed (what :func:`first_order_gradient` approximates); ``True``:
    no stop-gradient on either side. ``inner_rms`` reports the equivalent inner displacement.
    """
    inner_step = as_inner(step)
    f = _Functional(model)
    theta = f.params()
    losses, g_graph = _per_domain(f, theta, doms, create_graph=True)
    g = [[t.detach() for t in grads] for grads in g_graph]
    logs = _loss_logs(roles, losses)

    def lead(grads: Grads, detached: Grads) -> Grads:
        return grads if symmetric else detached

    objective = (
        losses[roles.current]
        if roles.current is not None
        else torch.zeros((), dtype=losses[0].dtype)
    )
    shifts = []

    def alignment(lead_graph: Grads, lead_detached: Grads, other: Grads, key: str, shift: bool):
        """-beta <lead, other>_P, or 0 when this meta-test is not shifted."""
        if not shift or inner_step.off:
            return 0.0
        inner = inner_step(lead_detached)
        dot = _dot(inner.direction(lead(lead_graph, lead_detached)), other)
        logs[key] = float(dot.detach())
        shifts.append(inner.length)
        return -inner.scale * dot

    if roles.mem_active:
        c = roles.current
        loss_r = sum(losses[k] for k in roles.replay) / len(roles.replay)
        g_r = _mean([g_graph[k] for k in roles.replay])
        objective = (
            objective + loss_r + alignment(g_graph[c], g[c], g_r, "align_mem", roles.shift_mem)
        )
    g_a = None
    if roles.use_gen:
        loss_a = sum(losses[i] for i in roles.group_a) / len(roles.group_a)
        loss_b = sum(losses[i] for i in roles.group_b) / len(roles.group_b)
        g_a_graph = _mean([g_graph[i] for i in roles.group_a])
        g_a = [t.detach() for t in g_a_graph]
        g_b = _mean([g_graph[i] for i in roles.group_b])
        align = alignment(g_a_graph, g_a, g_b, "align_gen", roles.shift_gen)
        objective = objective + roles.lambda_gen * (loss_a + loss_b + align)
    grads = list(torch.autograd.grad(objective, list(theta.values())))
    mem = _mean([g[k] for k in roles.replay]) if roles.mem_active else None
    b = _mean([g[i] for i in roles.group_b]) if roles.use_gen else None
    return PGAGradient(
        grads=grads,
        plain=_combine(roles, g, mem, g_a, b),
        domain_grads=g,
        inner_rms=sum(shifts) / len(shifts) if shifts else 0.0,
        logs=logs,
    )
