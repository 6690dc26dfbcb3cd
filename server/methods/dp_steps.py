"""The DP steps of the methods that can train under DP at a site (``privacy.dp_epsilon``, model
mode): every gradient of a loss on the site's private cases is a query of
:class:`simulator.dp.PrivateMean` (per-case gradients, clipped, summed, noised); everything else
(replay, the inner steps, Adam) is computed from those noisy gradients and public data, which
costs no privacy (post-processing).

PGA (``smg``, its ablations, ``smd_replay_matched``) with ``gen_lead=current``:

* once earlier sites are replayed, the current site is never a meta-test domain, so a step asks
  one query: g~_c, the noisy mean gradient of L_c at theta. J_mem's inner step leads with it,
  group A's mean gradient is (g~_c + sum_{A \\ c} g_k) / |A|, and the step is
  g~_c + mean_k g_k(theta_m) + lambda_gen (g~_A + g_B(theta_g)), the non-DP step with g_c
  replaced by g~_c;
* at the first visit (no replay) the domains are the current batch and two style views of it,
  all private: with J_gen's meta-test shifted (``smg``, ``smg_gen``) the step asks two queries,
  the leading view's gradient g~_A (it sets theta_g) and then, per case,
  grad[l(x) + lambda l(v_A)](theta) + lambda grad l(v_B)(theta_g); otherwise one query, per case
  grad[l(x) + lambda (l(v_A) + l(v_B))](theta).

With no clipping and no noise these are the non-DP steps exactly (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import functional_call

from server.methods.inner_step import Inner, InnerStep, as_inner
from server.methods.meta_gradient import (
    Grads,
    Pair,
    PGAGradient,
    Roles,
    _Functional,
    weighted_sum,
)
from simulator.dp import PrivateMean, per_case_grads
from simulator.segmentation import seg_loss


def case_loss(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """The segmentation loss of one case (one image and its mask) at the given parameters."""

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return seg_loss(functional_call(model, params, (x[None],)), y[None])

    return loss


def private_gradient(model: torch.nn.Module, private: PrivateMean, x, y) -> Grads:
    """The noisy mean gradient of the segmentation loss over the private cases ``x``, ``y``."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return private(per_case_grads(case_loss(model), params, x, y))


def _add(a: Grads, b: Grads) -> Grads:
    return [s + t for s, t in zip(a, b, strict=True)]


def dp_pga_gradient(
    model: torch.nn.Module,
    doms: list[Pair],
    roles: Roles,
    step: InnerStep | float,
    private: PrivateMean,
) -> PGAGradient:
    """The PGA step of :func:`server.methods.meta_gradient.first_order_gradient` with every
    gradient on private data a DP query (see the module's docstring). ``doms[0]`` is the current
    site's private batch; with no replay ``doms[1]`` and ``doms[2]`` are its two views (case i of
    each is case i of the batch), with replay ``doms[1:]`` are the replayed sites."""
    inner_step = as_inner(step)
    f = _Functional(model)
    theta = f.params()
    lam = roles.lambda_gen
    loss = case_loss(model)
    shifts: list[float] = []

    def lead(g: Grads, shift: bool) -> Inner | None:
        if not shift or inner_step.off:
            return None
        inner = inner_step(g)
        shifts.append(inner.length)
        return inner if inner.scale > 0 else None

    def grad_at(params: dict, idx: tuple[int, ...]) -> Grads:
        at = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        return f.grad(f.mean_loss(at, [doms[i] for i in idx]), at)

    if not roles.replay:  # the first visit: the batch and its two views, all private
        (x, y), (xa, _), (xb, _) = doms[0], doms[roles.group_a[0]], doms[roles.group_b[0]]
        inner = g_lead = None
        if roles.shift_gen and not inner_step.off:  # query 1: the leading view's gradient
            g_lead = private(per_case_grads(loss, theta, xa, y))
            inner = lead(g_lead, True)
        if inner is None:

            def whole(p, x1, a1, b1, y1):
                return loss(p, x1, y1) + lam * (loss(p, a1, y1) + loss(p, b1, y1))

            return _result(private(per_case_grads(whole, theta, x, xa, xb, y)), shifts)
        theta_g = f.displaced(theta, g_lead, inner)

        def here(p, x1, a1, y1):
            return loss(p, x1, y1) + lam * loss(p, a1, y1)

        def there(p, b1, y1):
            return lam * loss(p, b1, y1)

        per = _add(per_case_grads(here, theta, x, xa, y), per_case_grads(there, theta_g, xb, y))
        return _result(private(per), shifts)  # query 2: the step, per case
    if roles.current not in roles.group_a:
        raise ValueError("DP: the current site must lead J_gen (gen_lead=current)")
    g_c = private(per_case_grads(loss, theta, *doms[roles.current]))
    terms: list[tuple[float, Grads]] = [(1.0, g_c)]
    if roles.mem_active:
        inner = lead(g_c, roles.shift_mem)
        at = f.displaced(theta, g_c, inner) if inner is not None else theta
        terms.append((1.0, grad_at(at, roles.replay)))
    if roles.use_gen:
        rest = tuple(i for i in roles.group_a if i != roles.current)
        n_a = len(roles.group_a)
        parts = [(1.0 / n_a, g_c)]
        if rest:
            parts.append((len(rest) / n_a, grad_at(theta, rest)))
        g_a = weighted_sum(parts)
        inner = lead(g_a, roles.shift_gen)
        at = f.displaced(theta, g_a, inner) if inner is not None else theta
        terms += [(lam, g_a), (lam, grad_at(at, roles.group_b))]
    return _result(weighted_sum(terms), shifts)


def _result(grads: Grads, shifts: list[float]) -> PGAGradient:
    return PGAGradient(
        grads=grads,
        plain=[],
        domain_grads=[],
        inner_rms=sum(shifts) / len(shifts) if shifts else 0.0,
    )
