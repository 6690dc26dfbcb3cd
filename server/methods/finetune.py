"""Plain sequential fine-tuning."""

from __future__ import annotations

from server.methods.dp_steps import private_gradient
from server.methods.meta_gradient import apply_gradient
from simulator.dp import PrivateMean
from simulator.method import Batch, Method, StageContext
from simulator.segmentation import seg_loss


class Finetune(Method):
    """Sequential training on each site in turn, with no protection against forgetting.

    The lower bound of continual learning (e.g. Kirkpatrick et al., PNAS 2017, use it
    as the reference that catastrophic forgetting is measured against).
    """

    name = "finetune"
    relative_cost = 1.0
    private = True
    dp_refusal = ""

    def begin_stage(self, ctx: StageContext) -> None:
        self.opt = self.adam()

    def update(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        loss = seg_loss(self.model(batch.x), batch.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach())}

    def dp_update(self, batch: Batch, private: PrivateMean) -> dict[str, float]:
        """DP-SGD: the noisy mean of the drawn cases' clipped gradients."""
        self.model.train()
        apply_gradient(
            self.model, self.opt, private_gradient(self.model, private, batch.x, batch.y)
        )
        return {}
