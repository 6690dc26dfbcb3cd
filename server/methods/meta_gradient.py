"""The meta-gradient math shared by PGA (``smg``, its ablations, ``pga_exact``), ``mldg`` and ``fish``.

What follows the SMG-Learning paper's description: two alignment goals trained together with
synthetic replay, "orientational gradient alignment" towards previous sites
(memorizability) and "arbitrary gradient alignment" between domains (generalizability),
each turned into a meta-objective by a first-order Taylor expansion.

What is this project's derivation (the paper's equations are not public to us):
let L_c be the loss on a current-site batch, L_k on a replay batch of earlier site k,
and g = the gradient of a loss. The alignment objective is

    L_c + mean_k L_k - beta_o mean_k <sg(g_c), g_k> - beta_a <sg(g_A), g_B>

where sg() holds the leading gradient fixed ("direction fixed: current -> earlier";
for the arbitrary term, group A leads group B). With the Taylor identity
L_B(theta - alpha g_A) = L_B - alpha <g_A, g_B> + O(alpha^2), the gradient of each
term equals, up to O(alpha^2) and with beta = alpha, the first-order gradient
(no backpropagation through the inner step, as in first-order MLDG) of

    J_mem = L_c(theta) + mean_k L_k(theta - alpha g_c)
    J_gen = L_A(theta) + L_B(theta - alpha g_A)

with A, B a random split of the available domains (current + replayed sites), drawn
again every step; at stage 1, with no replay, A and B are two differently
style-augmented views of the current batch (simulated domain shift). Each step takes
the gradient of J_mem + lambda_gen * J_gen. Losses over several domains are averaged,
so the step size does not grow with the number of earlier sites.

``alignment_gradient`` differentiates the alignment objective itself by double
backpropagation; it is the reference the first-order approximation is tested against.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from simulator.method import Batch
from simulator.segmentation import seg_loss


def style_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random intensity-curve, contrast and noise change per image (a simulated new site)."""
    n = x.shape[0]
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand((n, 1, 1, 1), generator=gen) * (hi - lo) + lo).to(dev)

    gamma = torch.exp(u(-0.6, 0.6))
    y = x.clamp(0, 1) ** gamma
    y = y * u(0.6, 1.4) + u(-0.15, 0.15)
    y = torch.where(u(0, 1) < 0.3, 1.0 - y, y)  # sometimes invert the contrast
    y = y + torch.randn(x.shape, generator=gen).to(dev) * u(0.0, 0.05)
    return y.clamp(0, 1)


def domains_of(batch: Batch, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The available domains of a step: current site and each replayed site (or two views)."""
    if batch.replay:
        return [(batch.x, batch.y), *batch.replay.values()]
    return [(style_augment(batch.x, gen), batch.y), (style_augment(batch.x, gen), batch.y)]


def split(n: int, gen: torch.Generator) -> tuple[list[int], list[int]]:
    """A random split of ``n >= 2`` domains into two non-empty groups."""
    perm = torch.randperm(n, generator=gen).tolist()
    cut = int(torch.randint(1, n, (1,), generator=gen))
    return perm[:cut], perm[cut:]


class _Functional:
    """Loss and gradients of the model at arbitrary parameter values."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]

    def params(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def loss(self, params: dict[str, torch.Tensor], doms: list[tuple[torch.Tensor, torch.Tensor]]):
        return torch.stack([seg_loss(functional_call(self.model, params, (x,)), y) for x, y in doms]).mean()

    def grad(self, loss: torch.Tensor, params: dict[str, torch.Tensor], create_graph: bool = False,
             retain_graph: bool | None = None):
        return torch.autograd.grad(loss, list(params.values()), create_graph=create_graph,
                                   retain_graph=retain_graph)

    def step(self, params: dict[str, torch.Tensor], grads, alpha: float) -> dict[str, torch.Tensor]:
        """theta - alpha * g as new leaves (first order: no graph through the inner step)."""
        return {n: (p.detach() - alpha * g.detach()).requires_grad_(True)
                for (n, p), g in zip(params.items(), grads, strict=True)}


def first_order_meta_gradient(model: torch.nn.Module, current, replay: list, groups, alpha: float,
                              lambda_gen: float, use_mem: bool = True, use_gen: bool = True):
    """Gradient of J_mem + lambda_gen J_gen (first order); returns (grads, logs)."""
    f = _Functional(model)
    theta = f.params()
    total = [torch.zeros_like(p) for p in theta.values()]
    logs = {}
    if use_mem:
        loss_c = f.loss(theta, [current])
        g_c = f.grad(loss_c, theta)
        total = [t + g for t, g in zip(total, g_c, strict=True)]
        logs["loss_current"] = float(loss_c.detach())
        if replay:
            theta_m = f.step(theta, g_c, alpha)
            loss_meta = f.loss(theta_m, replay)
            total = [t + g for t, g in zip(total, f.grad(loss_meta, theta_m), strict=True)]
            logs["loss_mem_meta"] = float(loss_meta.detach())
    if use_gen:
        group_a, group_b = groups
        loss_a = f.loss(theta, group_a)
        g_a = f.grad(loss_a, theta)
        theta_g = f.step(theta, g_a, alpha)
        loss_b = f.loss(theta_g, group_b)
        g_b = f.grad(loss_b, theta_g)
        total = [t + lambda_gen * (ga + gb) for t, ga, gb in zip(total, g_a, g_b, strict=True)]
        logs["loss_gen_a"] = float(loss_a.detach())
        logs["loss_gen_meta"] = float(loss_b.detach())
    return total, logs


def alignment_gradient(model: torch.nn.Module, current, replay: list, groups, beta: float,
                       lambda_gen: float, use_mem: bool = True, use_gen: bool = True):
    """Gradient of the explicit alignment objective, by double backpropagation."""
    f = _Functional(model)
    theta = f.params()
    objective = torch.zeros(())
    logs = {}
    if use_mem:
        loss_c = f.loss(theta, [current])
        objective = objective + loss_c
        logs["loss_current"] = float(loss_c.detach())
        if replay:
            g_c = [g.detach() for g in f.grad(loss_c, theta, retain_graph=True)]  # sg(g_c): direction fixed
            loss_r = f.loss(theta, replay)
            g_r = f.grad(loss_r, theta, create_graph=True)
            dot = sum((a * b).sum() for a, b in zip(g_c, g_r, strict=True))
            objective = objective + loss_r - beta * dot
            logs["align_mem"] = float(dot.detach())
    if use_gen:
        group_a, group_b = groups
        loss_a = f.loss(theta, group_a)
        loss_b = f.loss(theta, group_b)
        g_a = [g.detach() for g in f.grad(loss_a, theta, retain_graph=True)]
        g_b = f.grad(loss_b, theta, create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(g_a, g_b, strict=True))
        objective = objective + lambda_gen * (loss_a + loss_b - beta * dot)
        logs["align_gen"] = float(dot.detach())
    grads = torch.autograd.grad(objective, list(theta.values()))
    return grads, logs
