"""Typed payloads: one frozen dataclass per message content (the codec is
:class:`simulator.records.Payload`: ``to_record``/``from_record`` over each field's role)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from flwr.app import RecordDict

from simulator.records import Arrays, ModelArch, Payload
from simulator.records import role as _role

__all__ = ["Arrays", "ModelArch", "Payload"]


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
    dp_train_share: float = _role("config")
    dp_train_clip: float = _role("config")
    dp_budget: float = _role("config")
    #: the most scalar bits the site sends the learner in the run
    scalar_bits_cap: int = _role("config")


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
    #: a number the code is about (``dp-delta``: the site's number of train cases; else 0)
    count: int = field(default=0, metadata={"role": "config"})


def is_error(rd: RecordDict) -> bool:
    """Whether a site's reply is an :class:`ErrorReply`."""
    return "config" in rd.config_records and "error" in rd["config"]
