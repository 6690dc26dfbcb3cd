"""One visit's local training, wherever it runs: the model, the method and the batches it draws.

In the default export mode a site trains on its own data inside its own process
(:class:`sites.site.Site`); in prompt-only mode the learner trains on synthetic images of the
visited site (:class:`server.learner.Learner`). Both run the same :class:`LocalVisit`, so a
method behaves the same whichever side runs it: the same batches from the same seeds, the
same outer steps, the same exported weights, state and logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from simulator.devices import to_device, to_host
from simulator.dp import DPSampler
from simulator.method import Batch, Method, StageContext
from simulator.payloads import ModelArch, VisitRequest
from simulator.seeding import derive_seed, torch_generator
from simulator.segmentation import UNet

Pair = tuple[torch.Tensor, torch.Tensor]
MethodFactory = Callable[[str, torch.nn.Module, Mapping[str, Any]], Method]


def build_unet(arch: ModelArch, weights: dict[str, np.ndarray], device: torch.device) -> UNet:
    """Rebuild the segmentation network of ``arch`` with the given weights."""
    model = UNet(arch.in_channels, arch.width, arch.depth)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    return model.to(device)


def replay_pairs(arrays: Mapping[str, np.ndarray], device: torch.device) -> dict[str, Pair]:
    """The ``<site>/x`` and ``<site>/y`` arrays of a visit as float tensors per site, on
    ``device``."""
    return {
        key[:-2]: to_device(device, arrays[key], arrays[f"{key[:-2]}/y"])
        for key in arrays
        if key.endswith("/x")
    }


@dataclass
class LocalVisit:
    """A visit in progress: train it in chunks of steps, then finish it."""

    model: UNet
    method: Method
    ctx: StageContext
    train: Pair
    replay: dict[str, Pair]
    batch_size: int
    #: how many earlier sites a step replays, as the method declares (0: all of them)
    replay_sites: int = 0
    #: current-site images go to ``match_size`` px and back with probability ``match_p``, drawn
    #: from a stream of their own (the batch stream stays the same with or without it)
    match_p: float = 0.0
    match_size: int = 0
    match_gen: torch.Generator | None = None
    #: the weights the visit was sent, name -> (shape, dtype): exactly what its model reply
    #: may carry
    received: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    #: under DP (set by the site before the first step): the Poisson sampler of the site's cases
    #: and the private gradient every step's loss on them goes through
    dp: DPSampler | None = None
    step: int = 0
    seconds: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)
    #: how many steps logged each scalar (a method may log some, e.g. alignment statistics, on
    #: some steps only: their means are over the steps that logged them)
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        req: VisitRequest,
        site: str,
        train: Pair,
        device: torch.device,
        method_factory: MethodFactory,
    ) -> LocalVisit:
        """Build the model from the request's weights, the method by name, and prepare the visit."""
        model = build_unet(req.arch, req.weights, device)
        if req.channels_last:
            model = model.to(memory_format=torch.channels_last)
        method = method_factory(req.method, model, req.hparams)
        method.load_state(req.state)
        replay = replay_pairs(req.replay, device)
        ctx = StageContext(
            site=site,
            stage=req.stage,
            steps=req.steps,
            device=device,
            generator=torch_generator(req.seed),
            replay_sites=sorted(replay),
        )
        method.begin_stage(ctx)
        received = {k: (tuple(v.shape), str(v.dtype)) for k, v in req.weights.items()}
        match_gen = (
            torch_generator(derive_seed(req.seed, "resolution-match")) if req.match_p > 0 else None
        )
        return cls(
            model,
            method,
            ctx,
            train,
            replay,
            req.batch_size,
            method.replay_sites_per_step(),
            match_p=req.match_p,
            match_size=int(req.match_size),
            match_gen=match_gen,
            received=received,
        )

    def batch(self) -> Batch:
        """The next step's batch: current-site pairs, and the replay batch shared out over the sites
        a step replays (all earlier sites, or the method's ``replay_sites_per_step`` of them)."""
        train_x, train_y = self.train
        n = len(train_x)
        if self.dp is not None:  # Poisson sampling of cases, from the site's own generator
            idx = torch.tensor(self.dp.draw(), dtype=torch.long)
        else:
            idx = torch.randint(n, (min(self.batch_size, n),), generator=self.ctx.generator)
        replay = {}
        shared = (
            min(len(self.replay), self.replay_sites) if self.replay_sites > 0 else len(self.replay)
        )
        per_site = -(-self.batch_size // max(shared, 1))
        for site, (x, y) in self.replay.items():
            ridx = torch.randint(len(x), (min(per_site, len(x)),), generator=self.ctx.generator)
            replay[site] = (x[ridx], y[ridx])
        x = train_x[idx]
        if self.match_gen is not None and self.match_size and self.match_size != x.shape[-1]:
            size = x.shape[-1]
            low = F.interpolate(
                F.interpolate(x, size=(self.match_size,) * 2, mode="area"),
                size=(size, size),
                mode="bilinear",
                align_corners=False,
            )
            pick = (torch.rand((len(x), 1, 1, 1), generator=self.match_gen) < self.match_p).to(
                x.device
            )
            x = torch.where(pick, low, x)
        return Batch(x, train_y[idx], replay)

    def run(
        self, n_steps: int, before_step: Callable[[int], None] | None = None
    ) -> tuple[dict[str, float], float]:
        """Up to ``n_steps`` outer steps; returns the mean of each logged scalar and the seconds
        taken."""
        n = min(int(n_steps), self.ctx.steps - self.step)
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _ in range(n):
            if before_step is not None:
                before_step(self.step)
            batch = self.batch()
            logs = (
                self.method.update(batch)
                if self.dp is None
                else self.method.dp_update(batch, self.dp.private)
            )
            for k, val in logs.items():
                sums[k] = sums.get(k, 0.0) + float(val)
                counts[k] = counts.get(k, 0) + 1
            self.step += 1
        dt = time.perf_counter() - t0
        self.seconds += dt
        for k, val in sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + val
            self.counts[k] = self.counts.get(k, 0) + counts[k]
        return {k: s / counts[k] for k, s in sums.items()}, dt

    def finish(
        self,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float], float]:
        """End the visit: the trained weights, the method's state, the visit's mean logs (besides
        the loss) with the method's end-of-visit summary, and the mean loss."""
        self.method.end_stage()
        weights = {k: to_host(t.contiguous()) for k, t in self.model.state_dict().items()}
        state = self.method.export_state()
        logs = {k: s / self.counts[k] for k, s in self.sums.items() if k != "loss"}
        logs.update(self.method.stage_summary())
        return weights, state, logs, self.sums.get("loss", 0.0) / max(self.counts.get("loss", 0), 1)
