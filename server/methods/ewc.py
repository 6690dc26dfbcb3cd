"""Elastic weight consolidation."""

from __future__ import annotations

import numpy as np
import torch

from simulator.method import Batch, HParam, Method, StageContext
from simulator.schemas import LOSS, RATIO
from simulator.segmentation import seg_loss


class EWC(Method):
    """Online elastic weight consolidation (Kirkpatrick et al., PNAS 2017; Schwarz et al., 2018).

    A quadratic penalty keeps each weight near its value after the previous stages,
    weighted by the accumulated diagonal (empirical) Fisher information. The Fisher
    statistics are computed inside the site at the end of its visit and travel with
    the model as algorithm state: they leave the site (scalar summaries of gradients,
    not pixels), which the privacy audit records as part of the ``model`` payload.
    """

    name = "ewc"
    dp_refusal = (
        "its Fisher information, computed on the site's images, would leave with the model "
        "outside any DP mechanism"
    )
    relative_cost = 1.0
    private = True
    log_names = {"loss": LOSS, "loss_current": LOSS, "ewc_penalty": RATIO}

    @classmethod
    def state_spec(cls, params):
        """The running Fisher and the anchor weights of every parameter (float32, its shape)."""
        return {
            f"{kind}.{n}": (shape, "float32")
            for kind in ("fisher", "anchor")
            for n, (shape, _) in params.items()
        }

    hyperparameters = (
        HParam("lambda_ewc", 100.0, lo=0.0, help="weight of the EWC penalty"),
        HParam("fisher_batches", 8, lo=1, hi=10000, help="last batches the Fisher is estimated on"),
    )

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.fisher = {
            k[7:]: torch.from_numpy(v.copy()) for k, v in state.items() if k.startswith("fisher.")
        }
        self.anchor = {
            k[7:]: torch.from_numpy(v.copy()) for k, v in state.items() if k.startswith("anchor.")
        }

    def begin_stage(self, ctx: StageContext) -> None:
        self.opt = self.adam()
        self.recent: list[tuple[torch.Tensor, torch.Tensor]] = []
        if not hasattr(self, "fisher"):
            self.fisher, self.anchor = {}, {}
        dev = ctx.device
        self.fisher = {k: v.to(dev) for k, v in self.fisher.items()}
        self.anchor = {k: v.to(dev) for k, v in self.anchor.items()}

    def update(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        loss_c = seg_loss(self.model(batch.x), batch.y)
        penalty = torch.zeros((), device=batch.x.device)
        for n, p in self.model.named_parameters():
            if n in self.fisher:
                penalty = penalty + (self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
        loss = loss_c + 0.5 * self.hp["lambda_ewc"] * penalty
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.recent = (self.recent + [(batch.x.detach(), batch.y.detach())])[
            -int(self.hp["fisher_batches"]) :
        ]
        return {
            "loss": float(loss.detach()),
            "loss_current": float(loss_c.detach()),
            "ewc_penalty": float(penalty.detach()),
        }

    def end_stage(self) -> None:
        """Fisher of this site at the final weights, added to the earlier sites' Fisher."""
        new = {n: torch.zeros_like(p) for n, p in self.model.named_parameters()}
        for x, y in self.recent:
            for i in range(len(x)):
                self.model.zero_grad(set_to_none=True)
                seg_loss(self.model(x[i : i + 1]), y[i : i + 1]).backward()
                for n, p in self.model.named_parameters():
                    new[n] += p.grad.detach() ** 2
        count = max(1, sum(len(x) for x, _ in self.recent))
        for n, p in self.model.named_parameters():
            self.fisher[n] = self.fisher.get(n, torch.zeros_like(p)) + new[n] / count
            self.anchor[n] = p.detach().clone()
        self.model.zero_grad(set_to_none=True)

    def export_state(self) -> dict[str, np.ndarray]:
        out = {f"fisher.{n}": v.cpu().numpy() for n, v in self.fisher.items()}
        out.update({f"anchor.{n}": v.cpu().numpy() for n, v in self.anchor.items()})
        return out
