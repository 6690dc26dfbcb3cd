"""SMD replay with a plain joint loss (the ablation without gradient alignment)."""

from __future__ import annotations

import torch

from server.methods.dp_steps import private_gradient
from server.methods.meta_gradient import apply_gradient, weighted_sum
from simulator.dp import PrivateMean
from simulator.method import Batch, Method, StageContext
from simulator.schemas import LOSS
from simulator.segmentation import seg_loss


class SMDReplay(Method):
    """Train on the current site and on synthetic replay of every earlier site, jointly.

    Generative replay (Shin et al., NeurIPS 2017) with replay from Site-Modulated
    Diffusion prompts: the loss is the mean of the current-site loss and each
    replayed site's loss, with no alignment of their gradients. It isolates what
    replay alone buys, against ``smg``.
    """

    name = "smd_replay"
    relative_cost = 2.1
    private = True
    uses_replay = True
    dp_refusal = ""
    log_names = {"loss": LOSS, "loss_current": LOSS, "loss_replay": LOSS}

    def begin_stage(self, ctx: StageContext) -> None:
        self.opt = self.adam()

    def update(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        loss_c = seg_loss(self.model(batch.x), batch.y)
        losses = [loss_c] + [seg_loss(self.model(x), y) for x, y in batch.replay.values()]
        loss = torch.stack(losses).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        logs = {"loss": float(loss.detach()), "loss_current": float(loss_c.detach())}
        if len(losses) > 1:
            logs["loss_replay"] = float(torch.stack(losses[1:]).mean().detach())
        return logs

    def dp_update(self, batch: Batch, private: PrivateMean) -> dict[str, float]:
        """The same mean of the current and replay losses, the current site's gradient a DP
        query (the replay's is public)."""
        self.model.train()
        share = 1.0 / (1 + len(batch.replay))
        terms = [(share, private_gradient(self.model, private, batch.x, batch.y))]
        if batch.replay:
            params = [p for p in self.model.parameters() if p.requires_grad]
            replay = sum(seg_loss(self.model(x), y) for x, y in batch.replay.values())
            terms.append((share, list(torch.autograd.grad(replay, params))))
        apply_gradient(self.model, self.opt, weighted_sum(terms))
        return {}
