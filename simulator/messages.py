"""Typed messages that cross a site boundary: Flower ``RecordDict`` with a declared kind.

Layout of every message::

    "meta"      ConfigRecord  kind, src, dst
    "config"    ConfigRecord  scalars and strings (method name, hyper-parameters, ...)
    "metrics"   MetricRecord  scalar metrics
    <name>      ArrayRecord   named arrays (weights, algorithm state, replay, ...)

What may leave a site is limited to :data:`EGRESS_KINDS` (DESIGN section 2).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

EGRESS_KINDS = ("prompt", "model", "metrics")
INGRESS_KINDS = ("visit", "evaluate", "tune", "fidelity", "attribute")
KINDS = EGRESS_KINDS + INGRESS_KINDS
RESERVED = ("meta", "config", "metrics")


class MessageError(ValueError):
    """A message is malformed or of an unexpected kind."""


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


def pack_json(value: Any) -> str:
    """Structured values (for example hyper-parameter tables) travel as JSON strings."""
    return json.dumps(value, sort_keys=True)


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
    scalars = {
        "config": sorted(dict(rd["config"]).keys()) if "config" in rd.config_records else [],
        "metrics": sorted(dict(rd["metrics"]).keys()) if "metrics" in rd.metric_records else [],
    }
    return {
        "kind": meta["kind"],
        "src": meta["src"],
        "dst": meta["dst"],
        "arrays": entries,
        "scalar_keys": scalars,
        "bytes": total,
    }
