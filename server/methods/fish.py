"""Fish: gradient matching by an inner loop and a Reptile-style outer step."""

from __future__ import annotations

import torch
from torch.func import functional_call

from server.methods.meta_gradient import style_augment
from simulator.method import Batch, HParam, Method, StageContext
from simulator.segmentation import seg_loss


class Fish(Method):
    """Fish (Shi et al., "Gradient Matching for Domain Generalization", ICLR 2022).

    An inner loop takes one SGD step per domain in random order on a copy of the
    weights; the outer step moves the weights towards the copy (theta += eps *
    (theta_inner - theta)), which to first order maximises the inner products of the
    domains' gradients. Domains are the current batch and style-augmented views of it
    (no replay).
    """

    name = "fish"
    private = True
    hyperparameters = (HParam("inner_lr", 1e-3, lo=0.0, help="SGD step of the inner loop"),
                       HParam("meta_step", 0.5, lo=0.0, hi=1.0, help="Reptile step towards the inner weights"),
                       HParam("views", 2, lo=1, hi=16, help="style-augmented views besides the batch"))

    def begin_stage(self, ctx: StageContext) -> None:
        self.opt = self.adam()
        self.gen = ctx.generator

    def update(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        doms = [(batch.x, batch.y)] + [(style_augment(batch.x, self.gen), batch.y)
                                       for _ in range(int(self.hp["views"]))]
        # a plain step on the current site keeps the site learned (Fish's warm-up, continued)
        loss_c = seg_loss(self.model(batch.x), batch.y)
        self.opt.zero_grad(set_to_none=True)
        loss_c.backward()
        self.opt.step()
        params = {n: p.detach().clone().requires_grad_(True) for n, p in self.model.named_parameters()}
        for i in torch.randperm(len(doms), generator=self.gen).tolist():
            x, y = doms[i]
            loss = seg_loss(functional_call(self.model, params, (x,)), y)
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {n: (p - self.hp["inner_lr"] * g).detach().requires_grad_(True)
                      for (n, p), g in zip(params.items(), grads, strict=True)}
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.add_(self.hp["meta_step"] * (params[n] - p))
        return {"loss": float(loss_c.detach())}
