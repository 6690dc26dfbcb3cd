"""Typed, frozen run configuration: profiles in TOML, ``--set`` overrides, validation.

A configuration is a :class:`Config` of frozen dataclass sections. It is built
from a profile file (``simulator/profiles/<name>.toml``), then command-line
options, then ``--set section.key=value`` overrides, and validated once. Every
error names the key and what is allowed. The resolved config is written to the
run folder before any work starts, so a run can be reproduced from its folder.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from simulator.benchmarks import catalog as benchmarks
from simulator.errors import ConfigError

PROFILES = ("smoke", "quick", "paper")


def _rng(lo: float | None = None, hi: float | None = None, choices: tuple = ()) -> dict:
    return {"lo": lo, "hi": hi, "choices": choices}


@dataclass(frozen=True)
class DataConfig:
    """What each site holds; built inside the site actor from these values."""

    #: phantom, mni152, folder:PATH, prostate:PATH or fundus:PATH (see simulator.benchmarks)
    benchmark: str = field(default="phantom", metadata=_rng())
    image_size: int = field(default=64, metadata=_rng(16, 512))
    #: cases per site of a generated benchmark (user data sets use every case they hold)
    n_train: int = field(default=96, metadata=_rng(4, 100000))
    n_test: int = field(default=32, metadata=_rng(2, 100000))
    #: what to segment: auto (the benchmark's own target), or disc / cup for fundus
    target: str = field(default="auto", metadata=_rng(choices=("auto", "disc", "cup")))
    #: share of a user site's cases held out for testing when it has no train/test folders
    test_fraction: float = field(default=0.25, metadata=_rng(0.05, 0.9))


@dataclass(frozen=True)
class ModelConfig:
    """The segmentation U-Net."""

    width: int = field(default=16, metadata=_rng(4, 256))
    depth: int = field(default=3, metadata=_rng(1, 6))


@dataclass(frozen=True)
class TrainConfig:
    """Local training during a visit, and evaluation."""

    steps_per_stage: int = field(default=200, metadata=_rng(1, 1000000))
    batch_size: int = field(default=16, metadata=_rng(1, 4096))
    lr: float = field(default=1e-3, metadata=_rng(1e-7, 1.0))
    eval_batch_size: int = field(default=64, metadata=_rng(1, 4096))
    #: train in the channels-last memory layout (faster convolutions on CPU; same model, same maths)
    channels_last: bool = field(default=True, metadata=_rng())
    progress_every: int = field(default=25, metadata=_rng(1, 1000000))
    #: replay methods: the probability that a current-site image of a step is taken to the SMD
    #: resolution and back (area down, bilinear up: the replay's own path), so that sharpness does
    #: not tell a site's real images from earlier sites' replay (0: off); 0.5 by the rule of
    #: docs/compare/tuning/RULE.md on the mni152 tuning cells (RESOLUTION.md)
    replay_resolution_match: float = field(default=0.5, metadata=_rng(0.0, 1.0))


@dataclass(frozen=True)
class RuntimeConfig:
    """Processes and threads."""

    num_cpus: int = field(default=2, metadata=_rng(1, 1024))
    torch_threads: int = field(default=2, metadata=_rng(1, 1024))
    dashboard: bool = field(default=True, metadata=_rng())
    #: what hosts the sites: Ray actors (ray), Flower messages to one SuperNode per site in
    #: Flower's simulation (flower), or plain objects in the driver's process (inprocess: tests
    #: and debugging; no isolation)
    engine: str = field(default="ray", metadata=_rng(choices=("ray", "flower", "inprocess")))
    device: str = field(default="auto", metadata=_rng(choices=("auto", "cpu", "cuda")))
    #: join a running Ray cluster ("auto" or HOST:PORT) instead of starting one ("": start one)
    address: str = field(default="", metadata=_rng())
    #: how often a site's process may be restarted after it died (its state is rebuilt from
    #: its spec)
    site_restarts: int = field(default=3, metadata=_rng(0, 100))
    #: seconds a site may take to answer one call before the run fails (it can then be resumed)
    site_timeout: float = field(default=1800.0, metadata=_rng(1.0, 1e7))
    #: port of the Prometheus endpoint Ray exports the run's metrics on (0: Ray chooses; a local
    #: start only)
    metrics_port: int = field(default=0, metadata=_rng(0, 65535))
    #: site actors pinned to nodes by a custom resource each: NAME=RESOURCE,... ("": anywhere)
    site_resources: str = field(default="", metadata=_rng())
    #: faults to inject, for tests and demos: kill-site:NAME@STAGE and/or kill-driver@STAGE, comma-
    #: separated
    inject_fault: str = field(default="", metadata=_rng())


@dataclass(frozen=True)
class RunConfig:
    """What to run: sites, order, method, seed, output folder."""

    profile: str = field(default="quick", metadata=_rng(choices=PROFILES))
    #: number of sites; 0: every site of a user data set, 6 of a generated benchmark
    sites: int = field(default=0, metadata=_rng(0, 1000))
    order: str = field(default="fixed", metadata=_rng())
    method: str = field(default="smg", metadata=_rng())
    seed: int = field(default=0, metadata=_rng(0, 2**31 - 1))
    out: str = field(default="", metadata=_rng())


@dataclass(frozen=True)
class SMDConfig:
    """Site-Modulated Diffusion: backbone, pre-training, prompt tuning, sampling, fidelity."""

    enabled: str = field(default="auto", metadata=_rng(choices=("auto", "on", "off")))
    #: public pre-training pool: auto (the benchmark's own), phantom or mni152
    pool: str = field(default="auto", metadata=_rng(choices=("auto", "phantom", "mni152")))
    image_size: int = field(default=32, metadata=_rng(16, 256))
    widths: str = field(default="16,32,64", metadata=_rng())
    tokens: int = field(default=4, metadata=_rng(1, 64))
    token_dim: int = field(default=32, metadata=_rng(8, 1024))
    train_timesteps: int = field(default=1000, metadata=_rng(10, 10000))
    prediction: str = field(
        default="sample", metadata=_rng(choices=("epsilon", "sample", "v_prediction"))
    )
    pretrain_steps: int = field(default=800, metadata=_rng(1, 10000000))
    pretrain_batch: int = field(default=16, metadata=_rng(1, 4096))
    pretrain_lr: float = field(default=2e-3, metadata=_rng(1e-7, 1.0))
    public_pool: int = field(default=1024, metadata=_rng(8, 10000000))
    public_seed: int = field(default=1, metadata=_rng(0, 2**31 - 1))
    prompt_steps: int = field(default=80, metadata=_rng(0, 1000000))
    prompt_lr: float = field(default=0.02, metadata=_rng(1e-6, 10.0))
    prompt_batch: int = field(default=16, metadata=_rng(1, 4096))
    #: appearance vectors drawn from the public prior and scored before prompt tuning starts
    prompt_candidates: int = field(default=32, metadata=_rng(1, 4096))
    #: prompt tuning without DP stops a phase when ``prompt_check_every`` steps improved the loss on
    #: a fixed probe by less than this fraction (0, the default: every step runs); DP tuning runs
    #: all its steps. Off by default: at 0.01 the probe loss held but one phantom site's TSTR fell
    prompt_stop_tol: float = field(default=0.0, metadata=_rng(0.0, 1.0))
    prompt_check_every: int = field(default=3, metadata=_rng(1, 1000000))
    sample_steps: int = field(default=10, metadata=_rng(1, 1000))
    replay_per_site: int = field(default=32, metadata=_rng(1, 100000))
    #: prompt-only mode: synthetic pairs of the visited site the learner trains on during its visit
    synthetic_per_site: int = field(default=96, metadata=_rng(1, 1000000))
    fidelity_steps: int = field(default=100, metadata=_rng(0, 1000000))
    detector_steps: int = field(default=150, metadata=_rng(1, 1000000))

    def width_tuple(self) -> tuple[int, ...]:
        try:
            widths = tuple(int(w) for w in self.widths.split(","))
        except ValueError:
            raise ConfigError(
                f"smd.widths: expected comma-separated integers, got {self.widths!r}"
            ) from None
        if len(widths) < 2 or any(w < 8 or w % 8 for w in widths):
            raise ConfigError(
                f"smd.widths: expected at least two multiples of 8, got {self.widths!r}"
            )
        return widths


#: the default cap of scalar bits each site sends the learner in a run (the README's privacy
#: section says what it allows and what it stops)
SCALAR_BITS_CAP = 4096


@dataclass(frozen=True)
class PrivacyConfig:
    """The egress guard and the non-private reference methods."""

    mode: str = field(default="strict", metadata=_rng(choices=("strict", "warn", "off")))
    #: what a site exports: model (the model travels to the site and back, as in the SMG-Learning
    #: paper) or prompt (only its SMD prompt and scalar metrics; the learner trains on synthetic
    #: images of the visited site, the strictest reading of the privacy model)
    exports: str = field(default="model", metadata=_rng(choices=("model", "prompt")))
    allow_non_private: bool = field(default=False, metadata=_rng())
    nn_threshold: float = field(default=0.02, metadata=_rng(0.0, 1.0))
    #: tune each site's prompt with DP-SGD to this epsilon (0: off); the bound covers the prompt
    dp_epsilon: float = field(default=0.0, metadata=_rng(0.0, 1e4))
    #: the delta of that bound; 0: 1 / (10 n), n the site's number of train cases
    dp_delta: float = field(default=0.0, metadata=_rng(0.0, 0.1))
    #: the norm each case's prompt gradient is clipped to
    dp_clip: float = field(default=0.03, metadata=_rng(1e-8, 1e6))
    #: in model mode, the share of dp_epsilon a site gives its visit's training (DP-SGD on the
    #: segmentation network); the prompt gets the rest, each at half of dp_delta, so the site's
    #: total is (dp_epsilon, dp_delta) by composition (prompt-only mode: the prompt gets it all)
    dp_train_share: float = field(default=0.5, metadata=_rng(0.0, 1.0))
    #: the norm each case's gradient is clipped to in DP visit training (per-case norms of the
    #: quick profile's network: medians 0.32-0.43)
    dp_train_clip: float = field(default=0.5, metadata=_rng(1e-8, 1e6))
    #: the most epsilon a site lets all runs together spend on one data set (RDP composition of
    #: every DP mechanism it ran on it, kept in the site's folder; 0: no cap)
    dp_budget: float = field(default=0.0, metadata=_rng(0.0, 1e6))
    #: the most scalar bits each site sends the learner in a run (each site refuses more)
    scalar_bits_cap: int = field(default=SCALAR_BITS_CAP, metadata=_rng(0, 10**9))


SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "runtime": RuntimeConfig,
    "smd": SMDConfig,
    "privacy": PrivacyConfig,
}


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of one run."""

    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    smd: SMDConfig = SMDConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    #: per-method hyper-parameters, ``{method: {name: value}}`` as given (checked against
    #: each method's declared, typed hyper-parameters when a run is planned)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]], source: str = "config") -> Config:
        """Rebuild (and validate) a config, for example from a run folder's config.json."""
        return build_config(None, data, source=source)


def _coerce(section: str, f: dataclasses.Field, value: Any) -> Any:
    key = f"{section}.{f.name}"
    typ = (
        f.type
        if isinstance(f.type, type)
        else {"int": int, "float": float, "str": str, "bool": bool}[f.type]
    )
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value), 10)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value))
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    return str(value)


def _validate_value(section: str, f: dataclasses.Field, value: Any) -> None:
    key = f"{section}.{f.name}"
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(
            f"{key}: {value!r} is not allowed; expected one of {', '.join(meta['choices'])}"
        )
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{key}: {value!r} is out of range; expected {lo} <= value <= {hi}")


def load_profile(name: str) -> dict[str, dict[str, Any]]:
    """The raw sections of a named profile."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    text = resources.files("simulator.profiles").joinpath(f"{name}.toml").read_text()
    return tomllib.loads(text)


def _method_values(table: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """``{method: {name: value}}`` from a TOML table or from ``methods.<method>.<name>`` keys.

    Values are kept as given; the run plan checks them against each method's declared,
    typed hyper-parameters (the one place they are resolved).
    """
    out: dict[str, dict[str, Any]] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            items = [(key, k, v) for k, v in value.items()]
        elif "." in key:
            items = [(*key.split(".", 1), value)]
        else:
            raise ConfigError(
                f"methods.{key} (from {source}): expected methods.<method>.<name>=value"
            )
        for method, name, v in items:
            out.setdefault(method, {})[name] = v
    return out


def parse_set(items: list[str]) -> dict[str, dict[str, str]]:
    """Parse ``section.key=value`` strings into nested overrides."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(
                f"--set {item!r}: expected section.key=value, for example train.lr=0.001"
            )
        lhs, value = item.split("=", 1)
        section, key = lhs.strip().split(".", 1)
        out.setdefault(section, {})[key.strip()] = value.strip()
    return out


def merge(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merge section dictionaries; later layers win."""
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{section}: expected a table of keys, got {values!r}")
            out.setdefault(section, {}).update(values)
    return out


def build_config(
    profile: str | None, overrides: dict[str, dict[str, Any]] | None = None, source: str = "--set"
) -> Config:
    """Profile values, then overrides; every key and value is validated."""
    base = load_profile(profile) if profile else {}
    methods = _method_values(base.pop("methods", {}), "profile")
    overrides = dict(overrides or {})
    for method, values in _method_values(overrides.pop("methods", {}), source).items():
        methods.setdefault(method, {}).update(values)
    raw = merge(base, overrides)
    if profile:
        raw.setdefault("run", {})["profile"] = profile
    sections = {}
    for section in raw:
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown config section {section!r} (from {source}); "
                f"expected one of {', '.join(SECTIONS)}"
            )
    for section, cls in SECTIONS.items():
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in raw.get(section, {}).items():
            if key not in known:
                raise ConfigError(
                    f"unknown key {section}.{key} (from {source}); "
                    f"expected one of {', '.join(section + '.' + k for k in known)}"
                )
            f = known[key]
            kwargs[key] = _coerce(section, f, value)
            _validate_value(section, f, kwargs[key])
        sections[section] = cls(**kwargs)
    data = sections["data"]
    data = dataclasses.replace(data, benchmark=benchmarks.normalise(data.benchmark))
    benchmarks.check_target(data.benchmark, data.target)
    sections["data"] = data
    cfg = Config(**sections, methods=methods)
    cfg.smd.width_tuple()
    if cfg.smd.image_size % 2 ** (len(cfg.smd.width_tuple()) - 1):
        raise ConfigError(
            f"smd.image_size: {cfg.smd.image_size} must be divisible by "
            f"{2 ** (len(cfg.smd.width_tuple()) - 1)} for {len(cfg.smd.width_tuple())} levels"
        )
    if cfg.data.image_size % 2**cfg.model.depth:
        raise ConfigError(
            f"data.image_size: {cfg.data.image_size} must be divisible by 2**model.depth "
            f"= {2**cfg.model.depth}"
        )
    return cfg
