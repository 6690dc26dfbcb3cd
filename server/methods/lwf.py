"""Learning without forgetting."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from simulator.method import Batch, HParam, Method, StageContext
from simulator.schemas import LOSS
from simulator.segmentation import seg_loss


class LwF(Method):
    """Learning without Forgetting (Li and Hoiem, TPAMI 2017), per-pixel for segmentation.

    The model received at the start of a visit is frozen as a teacher; the student
    learns the current site while matching the teacher's per-pixel foreground
    probabilities on the same images (temperature-scaled binary distillation). At
    stage 1 the teacher is untrained and distillation is off.
    """

    name = "lwf"
    dp_refusal = "its distillation step has no per-case DP form here"
    relative_cost = 1.1
    private = True
    log_names = {"loss": LOSS, "loss_current": LOSS, "distill": LOSS}
    hyperparameters = (
        HParam("lambda_distill", 1.0, lo=0.0, help="weight of the distillation loss"),
        HParam("temperature", 2.0, lo=1e-3, help="distillation temperature"),
    )

    def begin_stage(self, ctx: StageContext) -> None:
        self.opt = self.adam()
        self.teacher = None
        if ctx.stage > 1:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)

    def update(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        logits = self.model(batch.x)
        loss_c = seg_loss(logits, batch.y)
        loss = loss_c
        logs = {"loss_current": float(loss_c.detach())}
        if self.teacher is not None:
            t = self.hp["temperature"]
            with torch.no_grad():
                target = torch.sigmoid(self.teacher(batch.x) / t)
            distill = F.binary_cross_entropy_with_logits(logits / t, target) * t * t
            loss = loss + self.hp["lambda_distill"] * distill
            logs["distill"] = float(distill.detach())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        logs["loss"] = float(loss.detach())
        return logs
