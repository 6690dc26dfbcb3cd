"""A site's own settings: what it holds and how it protects it, decided by its operator.

The data spec, the egress guard's mode, the file-access trace, the site's log and its DP
settings belong to the site (or its node), never to a message: the Ray and in-process engines
pass them when they create the site (the driver is the operator of the simulated sites); a
Flower SuperNode reads them from the file its node config names (``settings``), and a node of
Flower's simulation from the folder its operator prepared (:data:`NODE_SETTINGS_ENV`,
``partition-<id>.json``). A run only *checks* them (:meth:`SiteSettings.check`): a request that
asks for a weaker setting is refused, one that expects other settings is told they differ.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.config import SCALAR_BITS_CAP
from simulator.errors import ConfigError
from simulator.payloads import SettingsCheck, SiteSpec
from sites.refusals import SiteRefusal

#: the environment variable naming the folder of a Flower simulation's node settings
NODE_SETTINGS_ENV = "SMG_SIM_NODE_SETTINGS"
#: the egress guard's modes from the weakest to the strongest
GUARD_STRENGTH = ("off", "record", "warn", "strict")


@dataclass(frozen=True)
class SiteSettings:
    """One site's own settings (see the module's docstring)."""

    name: str
    spec: SiteSpec
    #: the egress guard's mode: strict, warn, record (non-private references only) or off
    guard_mode: str = "strict"
    #: the file-access trace this site's process writes ("": none)
    trace_file: str = ""
    #: the site's own log: the details of every failure, tracebacks included ("": stderr)
    log_file: str = ""
    device: str = "auto"
    torch_threads: int = 1
    #: DP-SGD prompt tuning to this epsilon (0: off), at ``dp_delta`` (0: 1 / (10 cases)), each
    #: case's gradient clipped to ``dp_clip``
    dp_epsilon: float = 0.0
    dp_delta: float = 0.0
    dp_clip: float = 0.03
    #: the share of ``dp_epsilon`` for DP-SGD training during visits (the prompt gets the rest,
    #: each at half of the delta; 0: no training at this site under DP, the prompt gets it all)
    dp_train_share: float = 0.5
    #: the norm each case's gradient is clipped to in DP visit training
    dp_train_clip: float = 0.5
    #: the most epsilon all runs together may spend on this site's data set (0: no cap)
    dp_budget: float = 0.0
    #: whether the operator allows previews of real (user) images
    allow_real_previews: bool = False
    #: the run this site serves (its budgets are per run); "" for a node: all its runs
    run: str = ""
    #: the most scalar bits the site sends the learner in one run (default: the run's)
    scalar_bits_cap: int = SCALAR_BITS_CAP
    #: how often a run may ask the declared queries on learner-supplied images
    fidelity_queries: int = 2
    attribution_queries: int = 2
    #: the RMS distance under which a synthetic image counts as a copy of a real one
    nn_threshold: float = 0.02

    def __post_init__(self) -> None:
        if self.guard_mode not in GUARD_STRENGTH:
            raise ConfigError(
                f"site {self.name!r}: guard_mode {self.guard_mode!r}; expected one of "
                f"{', '.join(GUARD_STRENGTH)}"
            )
        if self.spec.site != self.name:
            raise ConfigError(f"site {self.name!r}: its spec is site {self.spec.site!r}'s")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> SiteSettings:
        """Settings from their JSON form; a missing or unknown key is named with ``source``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r}; expected {sorted(known)}")
        if "name" not in data or "spec" not in data:
            raise ConfigError(f"{source}: expected at least the keys 'name' and 'spec'")
        spec_keys = {f.name for f in dataclasses.fields(SiteSpec)}
        if not isinstance(data["spec"], dict) or set(data["spec"]) != spec_keys:
            raise ConfigError(f"{source}: 'spec' must hold exactly {sorted(spec_keys)}")
        return cls(**{**data, "spec": SiteSpec(**data["spec"])})

    def write(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: Path) -> SiteSettings:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read a site's settings: {exc}") from None
        return cls.from_json(data, str(path))

    def expected(self) -> SettingsCheck:
        """The settings check a run that plans exactly these settings sends."""
        spec = {k: v for k, v in dataclasses.asdict(self.spec).items() if k != "data_dir"}
        return SettingsCheck(
            spec=spec,
            guard_mode=self.guard_mode,
            dp_epsilon=self.dp_epsilon,
            dp_delta=self.dp_delta,
            dp_clip=self.dp_clip,
            dp_train_share=self.dp_train_share,
            dp_train_clip=self.dp_train_clip,
            dp_budget=self.dp_budget,
            scalar_bits_cap=self.scalar_bits_cap,
        )

    def check(self, req: SettingsCheck) -> None:
        """Accept a run's expectations only if they are these settings: refused with
        ``refused-setting`` when a weaker setting is asked for, ``settings-differ`` otherwise."""
        own = self.expected()
        rank = {m: i for i, m in enumerate(GUARD_STRENGTH)}
        weaker = rank.get(req.guard_mode, -1) < rank[self.guard_mode]
        if self.dp_epsilon > 0 and not 0 < req.dp_epsilon <= self.dp_epsilon:
            weaker = True
        if req.scalar_bits_cap > self.scalar_bits_cap:
            weaker = True
        if self.dp_budget > 0 and not 0 < req.dp_budget <= self.dp_budget:
            weaker = True
        if weaker:
            raise SiteRefusal("refused-setting", f"asked for {req}, the site's own are {own}")
        if req != own:
            raise SiteRefusal("settings-differ", f"expected {req}, the site's own are {own}")


def node_settings_folder() -> Path:
    """Where the operator of a Flower simulation on this machine keeps its nodes' settings
    (``$SMG_SIM_NODE_SETTINGS``, else beside the simulated sites' disks)."""
    import os

    from simulator.paths import site_data_root

    return Path(os.environ.get(NODE_SETTINGS_ENV) or site_data_root() / "flower-nodes")


def node_settings_file(partition: int) -> Path:
    """A simulated Flower node's settings file, in the folder its operator prepared."""
    return node_settings_folder() / f"partition-{partition}.json"
