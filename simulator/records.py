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


def role(role: str, **extra: Any) -> Any:
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
