"""The declared shape of every message a site may send: what the egress guard locks each one to.

A site never sends a free-form message. Before a message leaves, the site states its
:class:`Schema` (which arrays, with which shapes and dtypes; which metric names; which config
keys with which types and allowed strings), and the guard refuses anything else under the rule
``schema``, in every mode:

* a model reply carries exactly the weights it was sent (names, shapes, dtypes) plus the state
  entries its method declares (:meth:`simulator.method.Method.state_spec`), and only the metric
  names the method declares (:attr:`~simulator.method.Method.log_names`);
* a prompt reply carries exactly the prompt's declared K x D float32 shape;
* a metrics reply carries only its declared metric names;
* config values only declared keys with typed values, strings only from declared enumerations.

Every declared metric has a :class:`MetricRule`: a range and a resolution. The guard refuses a
value outside the range and rounds it to the resolution, so a declared metric can carry at most
``log2((hi - lo) / quantum + 1)`` bits; :func:`message_bits` gives a whole message's capacity
(its metrics and its enumerated config strings), which each site counts against its cap in bits
per run (:mod:`sites.site_state`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulator.messages import EGRESS_KINDS


@dataclass(frozen=True)
class MetricRule:
    """A declared metric's allowed range and resolution (values are rounded to ``quantum``)."""

    lo: float
    hi: float
    quantum: float

    def bits(self) -> float:
        """The most information one value can carry."""
        return math.log2((self.hi - self.lo) / self.quantum + 1)


#: Dice and fractions R.csv keeps (at the six decimals it prints)
FRACTION = MetricRule(0.0, 1.0, 1e-6)
#: diagnostic shares in [0, 1] (foreground, flagged fractions, TSTR Dice, AUCs, scores): what the
#: tables and plots print (three decimals)
SHARE = MetricRule(0.0, 1.0, 1e-3)
#: gradient cosines: the alignment heat maps print two decimals
COSINE = MetricRule(-1.0, 1.0, 1e-2)
LOSS = MetricRule(0.0, 100.0, 1e-3)
SECONDS = MetricRule(0.0, 1e5, 1e-2)
COUNT = MetricRule(0.0, 1e6, 1.0)
#: sizes in bytes, to the kilobyte
BYTES = MetricRule(0.0, 1e12, 1e3)
RATIO = MetricRule(0.0, 1e4, 1e-3)  # non-negative figures without a natural bound
SIGNED = MetricRule(-1e4, 1e4, 1e-3)  # signed figures (inner products, brightness, ...)
#: a distance between images (RMS, intensities in [0, 1]), to 0.01
DISTANCE = MetricRule(0.0, 1.0, 1e-2)
#: 48 bits of a digest (the only scalar over 30 bits: the integrity of a site's trace)
TRACE_DIGEST = MetricRule(0.0, 2.0**48, 1.0)
#: a yes / no answer
FLAG = MetricRule(0.0, 1.0, 1.0)
#: a process id (Linux allows up to 2**22)
PID = MetricRule(0.0, 2.0**22, 1.0)


@dataclass(frozen=True)
class Schema:
    """What one message may hold; anything else is a ``schema`` violation.

    ``arrays``: ``"group/key"`` -> (shape, dtype), exactly these. ``metrics``: name -> rule (a
    subset may be sent). ``config``: key -> allowed strings (a tuple), or the type of the value
    (``int``, ``float``, ``bool``). ``records``: further ConfigRecords by name, each with its own
    key -> rule table (for rows of a report); ``meta`` is checked against ``src``/``dsts``.
    """

    kind: str
    src: str
    dsts: tuple[str, ...] = ("learner",)
    arrays: Mapping[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    metrics: Mapping[str, MetricRule] = field(default_factory=dict)
    config: Mapping[str, tuple[str, ...] | type] = field(default_factory=dict)
    records: Mapping[str, Mapping[str, tuple[str, ...] | type]] = field(default_factory=dict)
    #: array groups the message may hold even when empty (a model reply's ``state`` of a stateless
    #: method)
    groups: tuple[str, ...] = ()

    def array_groups(self) -> set[str]:
        return {k.split("/", 1)[0] for k in self.arrays} | set(self.groups)


def _config_bits(allowed: tuple[str, ...] | type) -> float:
    if isinstance(allowed, tuple):
        return math.log2(len(allowed)) if len(allowed) > 1 else 0.0
    return 1.0 if allowed is bool else 64.0


def message_bits(schema: Schema, rd: Any) -> float:
    """The most information the scalars of the message ``rd`` (a checked ``RecordDict``) can carry
    under ``schema``: each metric it holds at its rule's bits, each enumerated config string at
    log2 of its choices, any other config or record value at 64 bits (arrays are counted apart,
    as the weights and prompt channels)."""
    bits = 0.0
    if "metrics" in rd.metric_records:
        bits += metric_bits(schema, rd["metrics"].keys())
    for name, record in rd.config_records.items():
        if name == "meta":
            continue
        table = schema.config if name == "config" else schema.records.get(name, {})
        for key in record.keys():
            col = key if name == "config" else key.split(".", 1)[-1]
            bits += _config_bits(table.get(col, str))
    return bits


def metric_bits(schema: Schema, names: Iterable[str]) -> float:
    """Bits the declared metrics ``names`` of a message can carry at most."""
    return sum(schema.metrics[n].bits() for n in names if n in schema.metrics)


def array_bits(shapes: Iterable[tuple[tuple[int, ...], str]]) -> int:
    """Bits the declared arrays can carry at most (every value at its dtype's width)."""
    return int(sum(int(np.prod(s)) * np.dtype(d).itemsize * 8 for s, d in shapes))


# -- the metric names each kind of site message declares ---------------------------------------


def rules(names: Iterable[str], rule: MetricRule) -> dict[str, MetricRule]:
    return dict.fromkeys(names, rule)


#: ``describe``: facts about the site's data; a generated site adds its acquisition parameters
#: (``acq_<name>``), a user data set its case and file counts
DESCRIBE = {
    **rules(
        (
            "n_train",
            "n_test",
            "height",
            "width",
            "channels",
            "acq_family",
            "acq_cases_train",
            "acq_cases_test",
            "acq_files",
        ),
        COUNT,
    ),
    "data_bytes": BYTES,
    **rules(("foreground_fraction", "intensity_mean", "intensity_std"), SHARE),
    **rules(
        (
            "acq_gamma",
            "acq_contrast",
            "acq_bias",
            "acq_noise",
            "acq_blur",
            "acq_resolution",
            "acq_organ_scale",
        ),
        RATIO,
    ),
    "acq_brightness": SIGNED,
}
#: a chunk of a visit: where it stands, its time and its mean loss (for the live progress only)
TRAIN = {"step": COUNT, "seconds": SECONDS, "loss": LOSS}
VISIT_START = {"steps": COUNT, "replay_sites": COUNT}
EVALUATE = {"dice": FRACTION, "dice_std": SHARE, "n": COUNT}
PROMPT_LOGS = {
    "prompt_steps": COUNT,
    "prompt_seconds": SECONDS,
    "prompt_loss_init": LOSS,
    "prompt_loss_search": LOSS,
    "prompt_loss_final": LOSS,
    "prompt_steps_planned": COUNT,
    "prompt_checks": COUNT,
    "data_bytes": BYTES,
}
#: under DP no loss on private data leaves: steps, seconds and the privacy parameters only
DELTA = MetricRule(0.0, 1.0, 1e-9)
PROMPT_LOGS_DP = {
    "prompt_steps": COUNT,
    "prompt_seconds": SECONDS,
    "data_bytes": BYTES,
    "dp_epsilon": RATIO,
    "dp_delta": DELTA,
    "dp_noise_multiplier": RATIO,
    "dp_sample_rate": FRACTION,
    "dp_cases": COUNT,
    "dp_clip": RATIO,
    "dp_dataset_epsilon": RATIO,
}
#: a visit under DP: its privacy parameters and the epsilon the accountant says it spent
DP_TRAIN = {
    **rules(
        ("dp_train_epsilon", "dp_train_noise_multiplier", "dp_train_clip", "dp_dataset_epsilon"),
        RATIO,
    ),
    "dp_train_delta": DELTA,
    "dp_train_sample_rate": FRACTION,
    **rules(("dp_train_steps", "dp_train_queries", "dp_train_cases"), COUNT),
}
#: the method logs a visit under DP may send: ratios of post-processed (noisy) steps
DP_VISIT_LOGS = ("inner_over_outer",)
#: a fidelity check: TSTR (always); the intensity, foreground, nearest-neighbour and membership
#: figures only from a site without DP (:data:`FIDELITY_DP`); distances to 0.01, shares to 0.001
FIDELITY = {
    **rules(
        (
            "tstr_dice_synthetic",
            "tstr_dice_real",
            "intensity_w1",
            "synthetic_foreground",
            "real_foreground",
            "nn_fraction_under_threshold",
            "nn_ratio_flagged_fraction",
            "mia_auc",
            "mia_auc_low",
            "mia_auc_high",
        ),
        SHARE,
    ),
    **rules(
        (
            "nn_distance_min",
            "nn_distance_p05",
            "nn_distance_median",
            "nn_threshold",
            "real_nn_distance_min",
            "real_nn_distance_median",
        ),
        DISTANCE,
    ),
    "tstr_ratio": RATIO,
    "histogram_l1": RATIO,
    "mia_members": COUNT,
    "mia_nonmembers": COUNT,
    "fidelity_seconds": SECONDS,
    "memorisation_seconds": SECONDS,
}
#: what a site under DP sends of a fidelity check: TSTR only (computed on its test split; not DP,
#: quantised, counted and named in the audit as a non-DP output)
FIDELITY_DP_NAMES = ("tstr_dice_synthetic", "tstr_dice_real", "tstr_ratio", "fidelity_seconds")
SCORES = {"n_scored": COUNT}
#: ``data inspect``: a site's statistics as its reader found them
INSPECT = {
    **rules(
        (
            "cases_train",
            "cases_test",
            "problems",
            "files",
            "slices",
            "height",
            "width",
            "channels",
            "empty_masks",
            "raw_height_min",
            "raw_height_max",
            "raw_width_min",
            "raw_width_max",
        ),
        COUNT,
    ),
    **rules(
        (
            "intensity_mean",
            "intensity_std",
            "intensity_p01",
            "intensity_p99",
            "foreground_fraction",
        ),
        FRACTION,
    ),
    **rules(("raw_intensity_min", "raw_intensity_max"), MetricRule(-1e6, 1e6, 1e-2)),
}
PING = {"alive": FLAG, "data_bytes": BYTES}
ARMED = {"armed": FLAG}
PRELOAD = {"import_seconds": SECONDS}
PREVIEW = {"bytes_written": BYTES}
BACKBONE_CHECK = {"present": FLAG}
BACKBONE_INSTALL = {"installed": FLAG, "backbone_bytes": BYTES}
#: a model reply's own figures, besides the method's declared logs
MODEL = {"steps": COUNT, "train_seconds": SECONDS, "mean_loss": LOSS}
GUARD_COUNTS = {
    **rules(("checked_messages", "checked_arrays", "violations"), COUNT),
    "checked_bytes": BYTES,
    **rules(("seconds", "build_seconds"), SECONDS),
}
#: the rules a violation row may name, and what the guard did
RULES = (
    "kind",
    "schema",
    "exact",
    "near-duplicate",
    "crop",
    "offset-copy",
    "scalar-run",
    "shape",
    "scalar",
    "budget",
    "range",
)
ACTIONS = ("stopped", "blocked", "allowed (non-private method)")
#: the kinds a violation row is counted under ("other": a message that declared no valid kind)
VIOLATION_KINDS = (*EGRESS_KINDS, "other")
#: a guard report: its counts, and violations counted per message kind and rule (no key, no
#: detail: those stay in the site's own log)
GUARD_REPORT = {
    **GUARD_COUNTS,
    #: the scalar bits this site sent the learner in this run, and its cap (its own setting)
    **rules(("scalar_bits", "scalar_bits_cap", "trace_lines"), MetricRule(0.0, 1e9, 1.0)),
    #: the site's file-access trace so far: 48 bits of the SHA-256 of its lines
    "trace_digest": TRACE_DIGEST,
    **{f"violations/{k}/{r}": COUNT for k in VIOLATION_KINDS for r in RULES},
}
#: the answer to a settings check
SETTINGS_CHECK = {"match": FLAG}
#: the answer to the Flower ServerApp's node discovery: which of the named sites the node is
NODE_HELLO = {"site_index": COUNT, "pid": PID}
