"""SMG-Learning: Parallel Gradient Alignment (PGA) with SMD replay, and its two ablations.

The derivation of the two meta-objectives, and which parts follow the paper, are in
:mod:`server.methods.meta_gradient`.
"""

from __future__ import annotations

from server.methods.meta_gradient import _Functional, domains_of, first_order_meta_gradient, split
from simulator.method import Batch, HParam, Method, StageContext


class SMG(Method):
    """SMG-Learning: PGA (J_mem + lambda_gen J_gen, first order) with SMD replay.

    Synchronous Memorizability and Generalizability learning (the SMG-Learning paper):
    parallel orientational and arbitrary gradient alignment against replay from a
    Site-Modulated Diffusion model. See the module docstring for which parts follow
    the paper's description and which are this project's derivation.
    """

    name = "smg"
    private = True
    uses_replay = True
    hyperparameters = (HParam("alpha", 1e-3, lo=0.0, help="SGD step of the inner updates"),
                       HParam("lambda_gen", 1.0, lo=0.0, help="weight of the generalizability objective J_gen"))
    use_mem = True
    use_gen = True

    def begin_stage(self, ctx: StageContext) -> None:
        self.opt = self.adam()
        self.gen = ctx.generator

    def _parts(self, batch: Batch):
        current = (batch.x, batch.y)
        replay = list(batch.replay.values())
        doms = domains_of(batch, self.gen)
        a, b = split(len(doms), self.gen)
        return current, replay, ([doms[i] for i in a], [doms[i] for i in b])

    def _gradient(self, current, replay, groups):
        return first_order_meta_gradient(self.model, current, replay, groups, self.hp["alpha"],
                                         self.hp["lambda_gen"], self.use_mem, self.use_gen)

    def update(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        current, replay, groups = self._parts(batch)
        grads, logs = self._gradient(current, replay, groups)
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.detach()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        logs["loss"] = logs.get("loss_current", logs.get("loss_gen_a", 0.0))
        return logs


class SMGMem(SMG):
    """Ablation of SMG-Learning with the memorizability meta-objective J_mem only."""

    name = "smg_mem"
    use_gen = False


class SMGGen(SMG):
    """Ablation of SMG-Learning with the generalizability meta-objective J_gen only (plus L_c)."""

    name = "smg_gen"
    use_mem = False

    def _gradient(self, current, replay, groups):
        grads, logs = first_order_meta_gradient(self.model, current, replay, groups, self.hp["alpha"],
                                                self.hp["lambda_gen"], use_mem=False, use_gen=True)
        f = _Functional(self.model)
        theta = f.params()
        loss_c = f.loss(theta, [current])  # the current site is still learned
        g_c = f.grad(loss_c, theta)
        logs["loss_current"] = float(loss_c.detach())
        return [a + b for a, b in zip(grads, g_c, strict=True)], logs
