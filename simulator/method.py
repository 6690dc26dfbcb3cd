"""The protocol every continual-learning method implements.

A method is built inside the site being visited, around the learner's model. The
site calls ``begin_stage`` once, ``update`` once per outer step with a freshly
sampled :class:`Batch`, then ``end_stage``. Each method owns its inner loop
within ``update``. Methods return only scalar logs; whatever algorithm state
they carry to the next stage (for example EWC statistics) goes through
``export_state``/``load_state`` as named arrays, so it can travel in a message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


@dataclass
class Batch:
    """One outer step's data: a current-site batch and, per earlier site, a replay batch."""

    x: torch.Tensor
    y: torch.Tensor
    replay: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass
class StageContext:
    """What a method may use during one visit."""

    site: str
    stage: int
    steps: int
    device: torch.device
    generator: torch.Generator
    replay_sites: list[str] = field(default_factory=list)


class Method(ABC):
    """Base class of every method; subclasses set ``name`` and ``private``."""

    name: ClassVar[str] = ""
    private: ClassVar[bool] = True
    #: whether the learner must generate SMD replay of earlier sites for each visit
    uses_replay: ClassVar[bool] = False
    #: hyper-parameters and their defaults; values arrive as a dict in the visit message
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: nn.Module, hparams: dict[str, Any]) -> None:
        unknown = set(hparams) - set(self.defaults) - {"lr"}
        if unknown:
            raise ValueError(
                f"method {self.name!r}: unknown hyper-parameter(s) {sorted(unknown)}; "
                f"known: {sorted(self.defaults) + ['lr']}"
            )
        self.model = model
        self.hp = {**self.defaults, **hparams}

    def adam(self) -> torch.optim.Adam:
        """The optimiser most methods use: Adam with ``lr`` and ``weight_decay`` from the hyper-parameters."""
        return torch.optim.Adam(self.model.parameters(), lr=self.hp["lr"],
                                weight_decay=self.hp.get("weight_decay", 0.0))

    @abstractmethod
    def begin_stage(self, ctx: StageContext) -> None:
        """Prepare for a visit (optimiser, teacher copies, ...)."""

    @abstractmethod
    def update(self, batch: Batch) -> dict[str, float]:
        """One outer step; returns scalar logs only."""

    def end_stage(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Finish a visit (compute statistics to carry forward, ...)."""

    def export_state(self) -> dict[str, np.ndarray]:
        """Algorithm state carried to the next stage (empty for stateless methods)."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`export_state` produced at the previous stage."""
        if state:
            raise ValueError(f"method {self.name!r} carries no state, got keys {sorted(state)}")
