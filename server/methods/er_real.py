"""Experience replay of real images: a NON-PRIVATE reference method."""

from __future__ import annotations

import numpy as np
import torch

from server.methods.streams import method_generator
from simulator.method import Batch, HParam, Method, StageContext
from simulator.schemas import LOSS
from simulator.segmentation import seg_loss


class ERReal(Method):
    """Replay a small buffer of real images of earlier sites (non-private upper reference).

    Experience replay (Chaudhry et al., "On Tiny Episodic Memories in Continual
    Learning", 2019), as in the predecessor setting of SMG-Learning. The buffer of
    real (image, mask) pairs travels with the model from site to site, so real
    pixels leave the site that owns them: the run needs ``--allow-non-private``,
    the guard records every real image that leaves, and the privacy audit fails.
    """

    name = "er_real"
    dp_refusal = "it keeps real images of earlier sites (non-private by design)"
    relative_cost = 0.9
    private = False
    log_names = {"loss": LOSS, "loss_current": LOSS}

    @classmethod
    def state_spec(cls, params):
        """The buffer of real pairs (any number of them: ``None`` stands for that dimension)."""
        return {
            "buffer_x": ((None, None, None, None), "float32"),
            "buffer_y": ((None, None, None, None), "uint8"),
        }

    hyperparameters = (
        HParam("buffer_per_site", 8, lo=1, hi=100000, help="real pairs kept per site"),
    )

    def __init__(self, model: torch.nn.Module, hparams: dict) -> None:
        super().__init__(model, hparams)
        self.buf_x: torch.Tensor | None = None  # real pairs of earlier sites (set by load_state)
        self.buf_y: torch.Tensor | None = None

    def begin_stage(self, ctx: StageContext) -> None:
        self.opt = self.adam()
        self.gen = method_generator(ctx)  # buffer draws leave the batch stream alone
        self.seen_x: list[torch.Tensor] = []
        self.seen_y: list[torch.Tensor] = []

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.buf_x = torch.from_numpy(state["buffer_x"].copy()) if "buffer_x" in state else None
        self.buf_y = (
            torch.from_numpy(state["buffer_y"].copy()).float() if "buffer_y" in state else None
        )

    def update(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        loss_c = seg_loss(self.model(batch.x), batch.y)
        loss = loss_c
        if self.buf_x is not None and len(self.buf_x):
            idx = torch.randint(
                len(self.buf_x), (min(len(batch.x), len(self.buf_x)),), generator=self.gen
            )
            dev = batch.x.device
            loss = 0.5 * (
                loss_c + seg_loss(self.model(self.buf_x[idx].to(dev)), self.buf_y[idx].to(dev))
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if sum(len(x) for x in self.seen_x) < 4 * self.hp["buffer_per_site"]:
            self.seen_x.append(batch.x.detach().cpu())
            self.seen_y.append(batch.y.detach().cpu())
        return {"loss": float(loss.detach()), "loss_current": float(loss_c.detach())}

    def export_state(self) -> dict[str, np.ndarray]:
        k = int(self.hp["buffer_per_site"])
        seen_x = torch.cat(self.seen_x).numpy()
        seen_y = torch.cat(self.seen_y).numpy()
        first = {}
        for i, img in enumerate(seen_x):  # batches repeat images: keep each once
            first.setdefault(img.tobytes(), i)
        keep = sorted(first.values())[:k]
        new_x = seen_x[keep]
        new_y = seen_y[keep].astype(np.uint8)
        if self.buf_x is not None:
            new_x = np.concatenate([self.buf_x.numpy(), new_x])
            new_y = np.concatenate([self.buf_y.numpy().astype(np.uint8), new_y])
        return {"buffer_x": new_x.astype(np.float32), "buffer_y": new_y}
