"""Typed messages that cross a site boundary: Flower ``RecordDict`` with a declared kind.

Layout of every message::

    "meta"      ConfigRecord  kind, src, dst
    "config"    ConfigRecord  typed scalars and strings (method name, stage, seeds, ...)
    "metrics"   MetricRecord  scalar metrics
    <name>      ConfigRecord  a typed table (for example the method's hyper-parameters)
    <name>      ArrayRecord   named arrays (weights, algorithm state, replay, ...)

Messages are built from and read into the typed payloads of :mod:`simulator.payloads`.
What may leave a site is limited to :data:`EGRESS_KINDS`: the site prompt, the model
after a visit, and scalar metrics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from simulator.errors import MessageError

EGRESS_KINDS = ("prompt", "model", "metrics")
INGRESS_KINDS = (
    "hello",
    "train",
    "fault",
    "check",
    "spec",
    "visit",
    "evaluate",
    "backbone_check",
    "backbone",
    "tune",
    "fidelity",
    "attribute",
    "preview",
)
KINDS = EGRESS_KINDS + INGRESS_KINDS
RESERVED = ("meta", "config", "metrics")


def make_message(
    kind: str,
    src: str,
    dst: str,
    arrays: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    metrics: Mapping[str, float | int] | None = None,
    config: Mapping[str, Any] | None = None,
) -> RecordDict:
    """Build a message of a declared kind; arrays are grouped into named ArrayRecords."""
    if kind not in KINDS:
        raise MessageError(f"unknown message kind {kind!r}; expected one of {', '.join(KINDS)}")
    rd = RecordDict()
    rd["meta"] = ConfigRecord({"kind": kind, "src": src, "dst": dst})
    rd["config"] = ConfigRecord(dict(config or {}))
    rd["metrics"] = MetricRecord({k: float(v) for k, v in (metrics or {}).items()})
    for group, named in (arrays or {}).items():
        if group in RESERVED:
            raise MessageError(f"array group name {group!r} is reserved")
        rd[group] = ArrayRecord(
            array_dict={k: Array(np.ascontiguousarray(v)) for k, v in named.items()}
        )
    return rd


def kind_of(rd: RecordDict) -> str:
    """The declared kind of a message."""
    try:
        return str(rd["meta"]["kind"])
    except KeyError:
        raise MessageError("message has no meta.kind") from None


def expect(rd: RecordDict, kind: str) -> RecordDict:
    """Return ``rd`` if it is of ``kind``, else raise."""
    got = kind_of(rd)
    if got != kind:
        raise MessageError(f"expected a {kind!r} message, got {got!r}")
    return rd


def arrays(rd: RecordDict, group: str) -> dict[str, np.ndarray]:
    """The arrays of one group as numpy, or an empty dict if the group is absent."""
    if group not in rd.array_records:
        return {}
    return {k: v.numpy() for k, v in rd.array_records[group].items()}


def array_groups(rd: RecordDict) -> list[str]:
    """Names of the array groups in a message."""
    return list(rd.array_records.keys())


def config(rd: RecordDict) -> dict[str, Any]:
    """The message's config values as a plain dict."""
    return dict(rd["config"]) if "config" in rd.config_records else {}


def metrics(rd: RecordDict) -> dict[str, float]:
    """The message's metrics as a plain dict."""
    return dict(rd["metrics"]) if "metrics" in rd.metric_records else {}


def describe(rd: RecordDict) -> dict[str, Any]:
    """What a ledger records of a message: kind, keys, shapes, dtypes, bytes, sha256."""
    meta = rd["meta"]
    entries = []
    total = 0
    for group, record in rd.array_records.items():
        for key, arr in record.items():
            nbytes = len(arr.data)
            total += nbytes
            entries.append(
                {
                    "key": f"{group}/{key}",
                    "shape": list(arr.shape),
                    "dtype": str(arr.dtype),
                    "bytes": nbytes,
                    "sha256": hashlib.sha256(arr.data).hexdigest(),
                }
            )
    scalars = {"config": [], "metrics": []}
    for name, record in [*rd.config_records.items(), *rd.metric_records.items()]:
        if name != "meta":
            scalars[name] = sorted(dict(record).keys())
    out = {
        "kind": meta["kind"],
        "src": meta["src"],
        "dst": meta["dst"],
        "arrays": entries,
        "scalar_keys": scalars,
        "bytes": total,
    }
    if "bits" in meta:  # a site's reply: the scalar capacity the site counted against its cap
        out["bits"] = float(meta["bits"])
    if meta["kind"] in INGRESS_KINDS and "config" in rd.config_records:
        # what a site was told (method, seeds, the backbone's key and digest): public, and recorded
        out["config"] = {
            k: v for k, v in rd["config"].items() if isinstance(v, (str, int, float, bool))
        }
    return out


def digest(rd: RecordDict) -> str:
    """The SHA-256 of a whole message (every record, key, dtype, shape and value, in a canonical
    order): two messages have the same digest only if they say the same thing."""
    h = hashlib.sha256()
    for name in sorted(rd.keys()):
        h.update(f"\0record:{name}".encode())
        if name in rd.array_records:
            for key in sorted(rd[name].keys()):
                arr = rd[name][key]
                h.update(f"\0{key}:{arr.dtype}:{tuple(arr.shape)}:".encode())
                h.update(arr.data)
        else:
            for key in sorted(rd[name].keys()):
                h.update(f"\0{key}={rd[name][key]!r}".encode())
    return h.hexdigest()
