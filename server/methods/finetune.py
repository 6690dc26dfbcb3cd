"""Plain sequential fine-tuning."""

from __future__ import annotations

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

    def begin_stage(self, ctx: StageContext) -> None:
        self.opt = self.adam()

    def update(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        loss = seg_loss(self.model(batch.x), batch.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach())}
