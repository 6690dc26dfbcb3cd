"""Fish: gradient matching by an inner loop and a Reptile-style outer step."""

from __future__ import annotations

import torch
from torch.func import functional_call

from server.methods.domains import style_augment
from server.methods.inner_step import inner_scale, rms
from server.methods.meta_gradient import (
    apply_gradient,
)
from server.methods.streams import method_generator
from simulator.method import Batch, HParam, Method, StageContext
from simulator.schemas import LOSS, RATIO
from simulator.segmentation import seg_loss


class Fish(Method):
    """Fish (Shi et al., "Gradient Matching for Domain Generalization", ICLR 2022).

    An inner loop takes one step per domain in random order on a copy of the weights;
    the outer step moves the weights towards the copy (theta += eps * (theta_inner -
    theta)), which to first order maximises the inner products of the domains'
    gradients. Each inner step is lookahead * lr * g / rms(g), measured in
    outer-optimiser steps (see :mod:`server.methods.meta_gradient`). Domains are the
    current batch and style-augmented views of it (no replay), drawn with the
    permutation from the method's own random stream.

    ``inner_over_outer``: RMS of theta_inner - theta over the RMS of the whole update
    (the Adam step on the current site plus the Reptile move). The domains' gradient
    cosines are not logged: the inner loop meets each domain at a different point, and
    computing them at theta would cost a pass per domain.
    """

    name = "fish"
    dp_refusal = "its inner loop over the private batch has no per-case DP form here"
    relative_cost = 3.5
    private = True
    log_names = {"loss": LOSS, "inner_over_outer": RATIO}
    hyperparameters = (
        HParam(
            "lookahead",
            1.0,
            lo=0.0,
            help="each inner step in outer-optimiser steps: lookahead*lr*g/rms(g) "
            "(1.0 until a sweep picks it)",
        ),
        HParam("meta_step", 0.5, lo=0.0, hi=1.0, help="Reptile step towards the inner weights"),
        HParam("views", 2, lo=1, hi=16, help="style-augmented views besides the batch"),
    )

    def begin_stage(self, ctx: StageContext) -> None:
        self.opt = self.adam()
        self.gen = method_generator(ctx)

    def update(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        doms = [(batch.x, batch.y)] + [
            (style_augment(batch.x, self.gen), batch.y) for _ in range(int(self.hp["views"]))
        ]
        start = [p.detach().clone() for p in self.model.parameters()]
        # a plain step on the current site keeps the site learned (Fish's warm-up, continued)
        loss_c = seg_loss(self.model(batch.x), batch.y)
        apply_gradient(
            self.model, self.opt, list(torch.autograd.grad(loss_c, list(self.model.parameters())))
        )
        step = float(self.hp["lookahead"]) * float(self.hp["lr"])
        params = {
            n: p.detach().clone().requires_grad_(True) for n, p in self.model.named_parameters()
        }
        for i in torch.randperm(len(doms), generator=self.gen).tolist():
            x, y = doms[i]
            loss = seg_loss(functional_call(self.model, params, (x,)), y)
            grads = torch.autograd.grad(loss, list(params.values()))
            scale = inner_scale(list(grads), step)
            params = {
                n: (p - scale * g).detach().requires_grad_(True)
                for (n, p), g in zip(params.items(), grads, strict=True)
            }
        with torch.no_grad():
            inner = rms([params[n] - p for n, p in self.model.named_parameters()])
            for n, p in self.model.named_parameters():
                p.add_(self.hp["meta_step"] * (params[n] - p))
            outer = rms([p - s for p, s in zip(self.model.parameters(), start, strict=True)])
        return {
            "loss": float(loss_c.detach()),
            "inner_over_outer": inner / outer if outer > 0 else 0.0,
        }
