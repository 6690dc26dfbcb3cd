"""Typed payloads: one frozen dataclass per message content, with ``to_record``/``from_record``.

Every message that crosses a site boundary is built from one of these classes and read
back into the same class, so the receiver never restates a default and never guesses a
key. A field's ``role`` says where it lives in the Flower ``RecordDict``
(see :mod:`simulator.messages` for the record layout):

=========  ==========================================================================
role       where
=========  ==========================================================================
config     a typed value in the ``config`` ConfigRecord (the default)
arch       the model architecture, its three fields in ``config``
table      a dict of typed scalars as a ConfigRecord of its own, named after the field
rows       a tuple of ``{str: str}`` rows as a ConfigRecord keyed ``<row>.<column>``
strings    a tuple of strings as a ConfigRecord keyed ``000``, ``001``, ...
ints       a tuple of integers, the same way
arrays     a dict of named arrays as an ArrayRecord named after the field
array      one array as an ArrayRecord (``group``/``key`` from the field's metadata)
metric     a scalar in the ``metrics`` MetricRecord
metrics    a dict of scalars in the ``metrics`` MetricRecord
=========  ==========================================================================

A record that lacks a field, or holds keys no field declares, is refused with a
:class:`~simulator.errors.MessageError` naming the kind and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from simulator.errors import MessageError
from simulator.messages import RESERVED, arrays, expect, make_message

P = TypeVar("P", bound="Payload")
Arrays = dict[str, np.ndarray]


def _role(role: str, **extra: Any) -> Any:
    return field(metadata={"role": role, **extra})


@dataclass(frozen=True)
class ModelArch:
    """The segmentation U-Net's shape: what a receiver needs to rebuild it from weights."""

    in_channels: int
    width: int
    depth: int


class Payload:
    """Base of every payload: the generic codec over the fields' roles."""

    KIND: ClassVar[str] = ""

    def to_record(self, src: str, dst: str) -> RecordDict:
        """This payload as a message of kind :attr:`KIND` from ``src`` to ``dst``."""
        config: dict[str, Any] = {}
        metrics: dict[str, float | int] = {}
        groups: dict[str, Arrays] = {}
        extra: dict[str, dict[str, Any]] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value, role = getattr(self, f.name), f.metadata.get("role", "config")
            if role == "config":
                config[f.name] = value
            elif role == "arch":
                config.update(dataclasses.asdict(value))
            elif role == "table":
                extra[f.name] = dict(value)
            elif role == "rows":
                extra[f.name] = {
                    f"{i}.{k}": str(v) for i, row in enumerate(value) for k, v in row.items()
                }
            elif role == "strings":
                extra[f.name] = {f"{i:03d}": str(v) for i, v in enumerate(value)}
            elif role == "ints":
                extra[f.name] = {f"{i:03d}": int(v) for i, v in enumerate(value)}
            elif role == "arrays":
                groups[f.name] = dict(value)
            elif role == "array":
                groups[f.metadata["group"]] = {f.metadata["key"]: value}
            elif role == "metric":
                metrics[f.name] = value
            else:  # metrics
                metrics.update(value)
        rd = make_message(self.KIND, src, dst, arrays=groups, metrics=metrics, config=config)
        for name, values in extra.items():
            rd[name] = ConfigRecord(values)
        return rd

    @classmethod
    def from_record(cls: type[P], rd: RecordDict) -> P:
        """Read a message of kind :attr:`KIND` back into this payload; refuse any other shape."""
        expect(rd, cls.KIND)
        config = dict(rd["config"]) if "config" in rd.config_records else {}
        metrics = dict(rd["metrics"]) if "metrics" in rd.metric_records else {}
        used_config: set[str] = set()
        used_records = set(RESERVED)
        kwargs: dict[str, Any] = {}
        # type: ignore[arg-type]
        metric_fields = {f.name for f in fields(cls) if f.metadata.get("role") == "metric"}
        for f in fields(cls):  # type: ignore[arg-type]
            role = f.metadata.get("role", "config")
            if role == "config":
                kwargs[f.name] = cls._take(config, f.name, used_config)
            elif role == "arch":
                kwargs[f.name] = ModelArch(
                    **{
                        k: int(cls._take(config, k, used_config))
                        for k in ("in_channels", "width", "depth")
                    }
                )
            elif role in ("table", "rows", "strings", "ints"):
                used_records.add(f.name)
                table = dict(rd[f.name]) if f.name in rd.config_records else {}
                kwargs[f.name] = cls._table(role, table)
            elif role == "arrays":
                used_records.add(f.name)
                kwargs[f.name] = arrays(rd, f.name)
            elif role == "array":
                group = f.metadata["group"]
                used_records.add(group)
                got = arrays(rd, group)
                if set(got) != {f.metadata["key"]}:
                    raise MessageError(
                        f"{cls.KIND} message: expected array {group}/{f.metadata['key']}, "
                        f"got {sorted(got)}"
                    )
                kwargs[f.name] = got[f.metadata["key"]]
            elif role == "metric":
                if f.name not in metrics:
                    raise MessageError(f"{cls.KIND} message: no metric {f.name!r}")
                kwargs[f.name] = metrics[f.name]
            else:
                kwargs[f.name] = {k: v for k, v in metrics.items() if k not in metric_fields}
        extra = sorted(set(config) - used_config)
        if extra:
            raise MessageError(f"{cls.KIND} message: undeclared config key {extra[0]!r}")
        stray = sorted(set(rd.keys()) - used_records)
        if stray:
            raise MessageError(f"{cls.KIND} message: undeclared record {stray[0]!r}")
        return cls(**kwargs)

    @classmethod
    def _take(cls, config: dict[str, Any], key: str, used: set[str]) -> Any:
        if key not in config:
            raise MessageError(f"{cls.KIND} message: missing config key {key!r}")
        used.add(key)
        return config[key]

    @staticmethod
    def _table(role: str, table: dict[str, Any]) -> Any:
        if role == "table":
            return table
        if role in ("strings", "ints"):
            return tuple(table[k] for k in sorted(table))
        rows: dict[int, dict[str, str]] = {}
        for key, value in table.items():
            i, col = key.split(".", 1)
            rows.setdefault(int(i), {})[col] = value
        return tuple(rows[i] for i in sorted(rows))


# -- what the driver hands a site when it is created ------------------------------------------
@dataclass(frozen=True)
class SiteSpec(Payload):
    """What a site builds its private data from (strings and numbers only, no pixels).

    ``data_dir`` is the site's own folder: where a generated benchmark is cached, or
    where a user data set keeps this site (empty: keep generated data in memory only).
    """

    KIND: ClassVar[str] = "spec"
    benchmark: str
    site: str
    site_index: int
    seed: int
    image_size: int
    n_train: int
    n_test: int
    target: str
    test_fraction: float
    data_dir: str


# -- learner -> site -----------------------------------------------------------------------
@dataclass(frozen=True)
class VisitRequest(Payload):
    """Start a visit: weights, method with its resolved hyper-parameters, algorithm state,
    replay."""

    KIND: ClassVar[str] = "visit"
    arch: ModelArch = _role("arch")
    method: str = _role("config")
    hparams: dict[str, Any] = _role("table")
    stage: int = _role("config")
    steps: int = _role("config")
    batch_size: int = _role("config")
    seed: int = _role("config")
    channels_last: bool = _role("config")
    weights: Arrays = _role("arrays")
    state: Arrays = _role("arrays")
    #: synthetic pairs of earlier sites, keyed ``<site>/x`` and ``<site>/y``
    replay: Arrays = _role("arrays")
    #: current-site images taken to ``match_size`` pixels and back with this probability (0: never)
    match_p: float = field(default=0.0, metadata={"role": "config"})
    match_size: int = field(default=0, metadata={"role": "config"})


@dataclass(frozen=True)
class EvaluateRequest(Payload):
    """Evaluate these weights on the site's test split."""

    KIND: ClassVar[str] = "evaluate"
    arch: ModelArch = _role("arch")
    eval_batch_size: int = _role("config")
    weights: Arrays = _role("arrays")


@dataclass(frozen=True)
class BackboneCheck(Payload):
    """Does the site's own cache hold the public SMD backbone with this key and digest?"""

    KIND: ClassVar[str] = "backbone_check"
    key: str = _role("config")
    sha256: str = _role("config")


@dataclass(frozen=True)
class BackboneOffer(Payload):
    """The public SMD backbone itself, as arrays, for a site whose cache lacks it (a file path
    does not travel between machines). The site keeps it only if the arrays and spec have the
    announced digest and the spec has the announced key."""

    KIND: ClassVar[str] = "backbone"
    key: str = _role("config")
    sha256: str = _role("config")
    #: :meth:`SMDSpec.to_json`, with ``widths`` as a list
    spec: dict[str, Any] = _role("table")
    state: Arrays = _role("arrays")


@dataclass(frozen=True)
class TuneRequest(Payload):
    """Tune the site's SMD prompt against the public backbone ``backbone_key`` in its own cache."""

    KIND: ClassVar[str] = "tune"
    #: the backbone's spec key (its folder in the site's SMD cache)
    backbone_key: str = _role("config")
    #: its digest: the site loads it only if it matches (recorded in the ledger)
    backbone_sha256: str = _role("config")
    steps: int = _role("config")
    lr: float = _role("config")
    batch: int = _role("config")
    candidates: int = _role("config")
    seed: int = _role("config")
    #: without DP: a phase stops when ``check_every`` steps improved the probe loss by less than
    #: ``stop_tol`` (relative; 0: no early stop)
    stop_tol: float = field(default=0.0, metadata={"role": "config"})
    check_every: int = field(default=3, metadata={"role": "config"})


@dataclass(frozen=True)
class FidelityRequest(Payload):
    """The replay of the site's own prompt, for TSTR, intensity and memorisation checks."""

    KIND: ClassVar[str] = "fidelity"
    replay: Arrays = _role("arrays")
    steps: int = _role("config")
    nn_threshold: float = _role("config")
    seed: int = _role("config")
    #: the prompt the site exported (``tokens``) and the public backbone (key, digest), for the
    #: membership test where the process that answers did not tune the prompt itself (a deployed
    #: Flower node starts a process per message)
    prompt: Arrays = _role("arrays")
    backbone_key: str = _role("config")
    backbone_sha256: str = _role("config")


@dataclass(frozen=True)
class AttributeRequest(Payload):
    """Synthetic images of every site and public images, for the site's real-vs-public detector."""

    KIND: ClassVar[str] = "attribute"
    #: the replay sets the queries hold, in order, and how many images each has
    sets: tuple[str, ...] = _role("strings")
    set_sizes: tuple[int, ...] = _role("ints")
    queries: np.ndarray = _role("array", group="queries", key="x")
    public: np.ndarray = _role("array", group="public", key="x")
    steps: int = _role("config")
    seed: int = _role("config")


@dataclass(frozen=True)
class TrainRequest(Payload):
    """Run up to ``steps`` outer steps of the visit in progress (a chunk, for progress)."""

    KIND: ClassVar[str] = "train"
    steps: int = _role("config")


@dataclass(frozen=True)
class SettingsCheck(Payload):
    """What the run's plan expects of a site's own settings: its data spec (without the folder,
    which is the site's to choose), the egress guard's mode and the DP settings. The site answers
    whether they are its own; it refuses a check that asks for a weaker setting."""

    KIND: ClassVar[str] = "check"
    #: the fields of :class:`SiteSpec` except ``data_dir``
    spec: dict[str, Any] = _role("table")
    guard_mode: str = _role("config")
    dp_epsilon: float = _role("config")
    dp_delta: float = _role("config")
    dp_clip: float = _role("config")


@dataclass(frozen=True)
class NodeHello(Payload):
    """A Flower ServerApp's question to a node: which of the run's sites (``names``) it serves."""

    KIND: ClassVar[str] = "hello"
    names: tuple[str, ...] = _role("strings")


@dataclass(frozen=True)
class FaultRequest(Payload):
    """The operator's fault injection: the site's process exits during its next ``phase``."""

    KIND: ClassVar[str] = "fault"
    phase: str = _role("config")


@dataclass(frozen=True)
class PreviewRequest(Payload):
    """Write a preview PNG of ``n`` train images into ``folder`` (``""``: the site's own data
    folder).

    ``real``: the site holds real (user) data and its operator allowed previews of it; a site with
    real data refuses without it, and writes only inside its own folder unless ``folder`` is given.
    """

    KIND: ClassVar[str] = "preview"
    folder: str = _role("config")
    n: int = _role("config")
    real: bool = _role("config")


# -- site -> learner / driver --------------------------------------------------------------------
@dataclass(frozen=True)
class ModelReply(Payload):
    """The weights and algorithm state after a visit, with the visit's mean logs.

    ``logs``: the mean over the visit's steps of every scalar the method logged besides the
    loss (for PGA methods the alignment statistics), and the method's end-of-visit summary
    (for PGA methods the site-by-site gradient cosines, keyed ``cos/<site>/<site>``).
    """

    KIND: ClassVar[str] = "model"
    weights: Arrays = _role("arrays")
    state: Arrays = _role("arrays")
    steps: int = _role("metric")
    train_seconds: float = _role("metric")
    mean_loss: float = _role("metric")
    logs: dict[str, float] = _role("metrics")


@dataclass(frozen=True)
class PromptReply(Payload):
    """The site's tuned K x D prompt and the scalar logs of its tuning."""

    KIND: ClassVar[str] = "prompt"
    tokens: np.ndarray = _role("array", group="prompt", key="tokens")
    logs: dict[str, float] = _role("metrics")


@dataclass(frozen=True)
class MetricsReply(Payload):
    """Scalars only: Dice, losses, timings, counts, statistics."""

    KIND: ClassVar[str] = "metrics"
    values: dict[str, float] = _role("metrics")


@dataclass(frozen=True)
class InspectReply(Payload):
    """A site's data statistics and the problems its reader found (short strings)."""

    KIND: ClassVar[str] = "metrics"
    values: dict[str, float] = _role("metrics")
    problems: tuple[str, ...] = _role("strings")


@dataclass(frozen=True)
class GuardReport(Payload):
    """What a site's egress guard checked since its process started: named counts only (see
    :data:`simulator.schemas.GUARD_REPORT`), and its mode."""

    KIND: ClassVar[str] = "metrics"
    mode: str = _role("config")
    counts: dict[str, float] = _role("metrics")


@dataclass(frozen=True)
class ErrorReply(Payload):
    """A failed or refused operation: a code of :data:`simulator.errors.SITE_ERROR_CODES`, and
    for the egress guard the rule and the kind of the stopped message ("" otherwise)."""

    KIND: ClassVar[str] = "metrics"
    error: str = _role("config")
    rule: str = _role("config")
    stopped_kind: str = _role("config")


def is_error(rd: RecordDict) -> bool:
    """Whether a site's reply is an :class:`ErrorReply`."""
    return "config" in rd.config_records and "error" in rd["config"]
