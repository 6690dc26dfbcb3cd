"""Meta-learning for domain generalisation, first order."""

from __future__ import annotations

from server.methods.meta_gradient import first_order_meta_gradient, style_augment
from simulator.method import Batch, HParam, Method, StageContext


class MLDG(Method):
    """MLDG (Li et al., AAAI 2018), first order, on simulated domains of the current site.

    With one real domain per visit, meta-train is the current batch and meta-test a
    style-augmented view of it (a simulated unseen site): the gradient of
    L_train(theta) + L_test(theta - alpha g_train), first order (MLDG's beta = 1). No replay.
    """

    name = "mldg"
    private = True
    hyperparameters = (HParam("alpha", 1e-3, lo=0.0, help="SGD step of the inner (meta-train) update"),)

    def begin_stage(self, ctx: StageContext) -> None:
        self.opt = self.adam()
        self.gen = ctx.generator

    def update(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        current = (batch.x, batch.y)
        shifted = (style_augment(batch.x, self.gen), batch.y)
        grads, logs = first_order_meta_gradient(self.model, current, [], ([current], [shifted]),
                                                self.hp["alpha"], 1.0, use_mem=False, use_gen=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.detach()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return {"loss": logs["loss_gen_a"], "loss_meta_test": logs["loss_gen_meta"]}
