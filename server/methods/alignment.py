"""What gradient alignment did in a step, from the per-domain gradients the step already computed.

Every statistic here is a function of the Gram matrix G[i, j] = <g_i, g_j> of the domains'
gradients at theta (the current site, each replayed site, or the two style views), so it
costs a few inner products per step and no extra forward or backward pass:

* ``align_cos_mem``: mean over replayed sites k of cos(g_c, g_k) (absent without replay);
* ``align_cos_gen``: cos(g_A, g_B) of the two groups' mean gradients (absent without a split);
* ``align_rel_change``: ||g_meta - g_plain|| / ||g_plain||, how far the meta terms moved
  the update away from the same step with the meta-test losses at theta;
* ``inner_over_outer``: RMS of the inner displacement over the RMS of the parameter change
  the optimiser actually made (set by the method, which takes the outer step).
"""

from __future__ import annotations

import math

import torch

from server.methods.meta_gradient import Grads, PGAGradient, Roles


def gram(domain_grads: list[Grads]) -> torch.Tensor:
    """G[i, j] = <g_i, g_j> over all parameters, in float64."""
    n = len(domain_grads)
    out = torch.zeros((n, n), dtype=torch.float64, device=domain_grads[0][0].device)
    for parts in zip(*domain_grads, strict=True):
        x = torch.stack([p.detach().reshape(-1) for p in parts]).double()
        out += x @ x.T
    return out.cpu()  # one transfer per step


def _group_cos(G: torch.Tensor, a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """cos(mean_a g, mean_b g) from the Gram matrix (0 when either mean gradient is zero)."""
    ia, ib = list(a), list(b)
    ab = float(G[ia][:, ib].sum()) / (len(ia) * len(ib))
    aa = float(G[ia][:, ia].sum()) / len(ia) ** 2
    bb = float(G[ib][:, ib].sum()) / len(ib) ** 2
    den = math.sqrt(max(aa, 0.0) * max(bb, 0.0))
    return ab / den if den > 0 else 0.0


def cosine(G: torch.Tensor, i: int, j: int) -> float:
    """cos(g_i, g_j) from the Gram matrix (0 when either gradient is zero)."""
    return _group_cos(G, (i,), (j,))


def relative_change(meta: Grads, plain: Grads) -> float:
    """||meta - plain|| / ||plain|| (0 when the plain gradient is zero)."""
    norm = torch.nn.utils.get_total_norm
    base = float(norm([p.detach() for p in plain]))
    diff = float(norm([m.detach() - p.detach() for m, p in zip(meta, plain, strict=True)]))
    return diff / base if base > 0 else 0.0


def alignment_logs(res: PGAGradient, roles: Roles, G: torch.Tensor) -> dict[str, float]:
    """``align_cos_mem``, ``align_cos_gen`` (each where defined) and ``align_rel_change``."""
    logs = {}
    if roles.replay:
        logs["align_cos_mem"] = sum(cosine(G, roles.current, k) for k in roles.replay) / len(
            roles.replay
        )
    if roles.group_a and roles.group_b:
        logs["align_cos_gen"] = _group_cos(G, roles.group_a, roles.group_b)
    logs["align_rel_change"] = relative_change(res.grads, res.plain)
    return logs


def inner_over_outer(inner_rms: float, outer_rms: float) -> float:
    """The inner displacement in units of the optimiser's actual step (0 when it did not move)."""
    return inner_rms / outer_rms if outer_rms > 0 else 0.0


def cosine_summary(names: list[str], G: torch.Tensor) -> dict[str, float]:
    """``cos/<a>/<b>`` for every pair of distinct domains of a step, once (the cosine is
    symmetric: ``a`` before ``b`` in ``names``; the heat map mirrors it)."""
    return {
        f"cos/{a}/{b}": cosine(G, i, j)
        for i, a in enumerate(names)
        for j, b in enumerate(names)
        if i < j
    }
