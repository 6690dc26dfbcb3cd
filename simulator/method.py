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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from simulator.dp import PrivateMean
from simulator.errors import ConfigError
from simulator.optim import Adam
from simulator.schemas import LOSS, MetricRule

HValue = int | float | bool | str
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class HParam:
    """One declared hyper-parameter of a method: its type (that of the default) and allowed values.

    ``choices`` makes a string hyper-parameter an enumeration; ``lo``/``hi`` bound numbers.
    """

    name: str
    default: HValue
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    @property
    def type(self) -> type:
        return type(self.default)

    def coerce(self, method: str, value: Any) -> HValue:
        """``value`` (from TOML, ``--set`` or code) as this parameter's type, or a ConfigError."""
        key, typ = f"methods.{method}.{self.name}", self.type
        if typ is bool:
            text = str(value).lower()
            if isinstance(value, bool) or text in _TRUE + _FALSE:
                return value if isinstance(value, bool) else text in _TRUE
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        if typ is str:
            if self.choices and str(value) not in self.choices:
                raise ConfigError(
                    f"{key}: {value!r} is not allowed; expected one of {', '.join(self.choices)}"
                )
            return str(value)
        try:
            if isinstance(value, bool):
                raise ValueError
            out = typ(value) if typ is float or isinstance(value, int) else int(str(value), 10)
        except (TypeError, ValueError):
            what = "an integer" if typ is int else "a number"
            raise ConfigError(f"{key}: expected {what}, got {value!r}") from None
        if self.lo is not None and out < self.lo or self.hi is not None and out > self.hi:
            raise ConfigError(
                f"{key}: {out!r} is out of range; expected {self.lo} <= value <= {self.hi}"
            )
        return out


#: Hyper-parameters every method has: the outer learning rate (``train.lr`` unless set per
#: method) and the weight decay of its optimiser.
LR = HParam("lr", 1e-3, lo=1e-7, hi=1.0, help="outer learning rate (default: train.lr)")
WEIGHT_DECAY = HParam(
    "weight_decay", 0.0, lo=0.0, hi=1.0, help="weight decay of the outer Adam optimiser"
)


def declared(cls: type[Method]) -> dict[str, HParam]:
    """Every hyper-parameter a method class accepts, by name."""
    return {p.name: p for p in (LR, WEIGHT_DECAY, *cls.hyperparameters)}


def resolve_hparams(
    cls: type[Method], lr: float, values: Mapping[str, Any] | None = None
) -> dict[str, HValue]:
    """The one place a method's hyper-parameters are merged and checked: defaults, ``lr``, then
    ``values``.

    Unknown names and values of the wrong type or out of range raise a ConfigError naming
    ``methods.<method>.<name>`` and what is allowed.
    """
    known = declared(cls)
    unknown = sorted(set(values or {}) - set(known))
    if unknown:
        raise ConfigError(
            f"methods.{cls.name}.{unknown[0]}: unknown hyper-parameter; "
            f"{cls.name} has {', '.join(sorted(known))}"
        )
    out = {name: p.default for name, p in known.items()}
    out["lr"] = float(lr)
    for name, value in (values or {}).items():
        out[name] = known[name].coerce(cls.name, value)
    return out


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
    #: the hyper-parameters it declares besides ``lr`` (typed by their defaults)
    hyperparameters: ClassVar[tuple[HParam, ...]] = ()
    #: the scalars ``update`` may log, each with its range and resolution: the only metric names
    #: (besides the model reply's own) the site's egress guard lets a model reply carry
    log_names: ClassVar[Mapping[str, MetricRule]] = {"loss": LOSS}
    #: a run's training time relative to ``finetune``'s, from ``smg-sim bench`` step costs (quick
    #: profile, ``docs/diagnostics/bench-methods.json``); only ``compare`` uses it: its ETA costs a
    #: method before any run of it has finished, and with several runs at once a cell's costliest
    #: run starts first
    relative_cost: ClassVar[float] = 1.0
    #: why the method cannot train under DP at a site (privacy.dp_epsilon in model mode); ""
    #: for a method that implements :meth:`dp_update`
    dp_refusal: ClassVar[str] = "it has no DP training step"

    @classmethod
    def state_spec(
        cls, params: Mapping[str, tuple[tuple[int, ...], str]]
    ) -> dict[str, tuple[tuple[int, ...], str]]:
        """The entries :meth:`export_state` may produce, name -> (shape, dtype), given the model's
        parameters name -> (shape, dtype): what the egress guard lets the model reply's state
        hold."""
        return {}

    @classmethod
    def summary_names(cls, domains: list[str]) -> dict[str, MetricRule]:
        """The names :meth:`stage_summary` may use when the visit's domains are ``domains`` (the
        visited site, then the replayed sites)."""
        return {}

    def __init__(self, model: nn.Module, hparams: Mapping[str, HValue]) -> None:
        """``hparams``: the resolved table of :func:`resolve_hparams` (every declared name,
        typed)."""
        if set(hparams) != set(declared(type(self))):
            raise ConfigError(
                f"method {self.name!r}: expected resolved hyper-parameters "
                f"{sorted(declared(type(self)))}, got {sorted(hparams)}"
            )
        self.model = model
        self.hp = dict(hparams)

    def replay_sites_per_step(self) -> int:
        """What the visit's batch sampler needs from the method: how many earlier sites one step
        replays, the replay batch shared out over them (0: every earlier site)."""
        return 0

    def adam(self) -> Adam:
        """The optimiser most methods use: Adam with ``lr`` and ``weight_decay`` from the
        hyper-parameters."""
        return Adam(self.model.parameters(), lr=self.hp["lr"], weight_decay=self.hp["weight_decay"])

    @abstractmethod
    def begin_stage(self, ctx: StageContext) -> None:
        """Prepare for a visit (optimiser, teacher copies, ...)."""

    @abstractmethod
    def update(self, batch: Batch) -> dict[str, float]:
        """One outer step; returns scalar logs only."""

    @classmethod
    def dp_check(cls, hparams: Mapping[str, HValue]) -> str:
        """Why the method with these hyper-parameters cannot train under DP ("" if it can): the
        class's ``dp_refusal``, or a reason its hyper-parameters give."""
        return cls.dp_refusal

    def dp_queries(self, has_replay: bool) -> int:
        """How many private gradient queries one :meth:`dp_update` step asks of the same sample
        (the accountant scales the noise by the square root)."""
        return 1

    def dp_update(self, batch: Batch, private: PrivateMean) -> dict[str, float]:
        """One outer step under DP: ``batch.x``/``batch.y`` are a Poisson sample of the site's
        cases (one slice each), and every gradient of a loss on them goes through ``private``;
        returns only scalars that are not computed on private data."""
        raise NotImplementedError(f"method {self.name!r}: {self.dp_refusal}")

    def end_stage(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Finish a visit (compute statistics to carry forward, ...)."""

    def stage_summary(self) -> dict[str, float]:
        """Scalars that describe the end of the visit (PGA methods: the gradient cosines between
        sites)."""
        return {}

    def export_state(self) -> dict[str, np.ndarray]:
        """Algorithm state carried to the next stage (empty for stateless methods)."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`export_state` produced at the previous stage."""
        if state:
            raise ValueError(f"method {self.name!r} carries no state, got keys {sorted(state)}")
