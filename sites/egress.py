"""The egress guard: every message a site sends is checked before it leaves.

First line, the message's declared schema (:mod:`simulator.schemas`), in every mode:

* ``kind``     the message declares the kind its schema names (one of prompt, model, metrics),
               comes from this site and goes to a declared destination;
* ``schema``   it holds exactly the declared arrays (names, shapes, dtypes), only declared metric
               names and config keys, config values of the declared types, strings only from
               declared enumerations, and no record the schema does not name;
* ``range``    every metric value lies in its declared range; it is rounded to its declared
               resolution before it leaves (so each value carries a bounded number of bits).

Second line, the content, against the site's own real images and masks (:mod:`sites.blocklist`):

* ``exact``, ``near-duplicate``, ``crop``
               no array holds a real image or mask slice, in any dtype, flattened, reshaped,
               rescaled, shifted, transposed or cropped;
* ``offset-copy`` no array holds a run of real values at any offset (sign-invariant; runs in
               which one value fills 14 or more of the 16 places, such as a mask's zeros with a
               stray one, identify nothing and are skipped), for example inside a declared weight;
* ``scalar-run`` the metric values of a message, in order, hold no run of real values;
* ``budget``   the array bytes of each kind stay within a per-kind budget.

Modes: ``strict`` (default) raises :class:`EgressViolation`, which stops the run; ``warn``
removes only the offending entries, records each violation and lets the rest go; ``record``
lets the message go unchanged and records every violation (only for the non-private reference
methods, whose audit then fails); ``off`` checks nothing (for measuring the guard's cost only).

A violation names the key only if the schema declares it (an undeclared key could itself carry
data): others appear as ``<undeclared ...>`` with their length. Keys and details are written to
the site's own log only; what leaves the site is a count per message kind and rule
(:meth:`EgressGuard.counts`) and, when the guard stops a reply, the rule and the kind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import RecordDict

from simulator.errors import EgressViolation
from simulator.messages import describe, kind_of
from simulator.schemas import Schema
from sites.blocklist import Blocklist, WindowIndex

DEFAULT_BUDGETS = {"prompt": 1 << 20, "model": 256 << 20, "metrics": 1 << 20}
MODES = ("strict", "warn", "record", "off")
RESERVED = ("meta", "config", "metrics")


@dataclass
class Violation:
    """One recorded violation."""

    site: str
    kind: str
    key: str
    rule: str
    detail: str
    action: str


def _shape_ok(shape: tuple[int, ...], declared: tuple[int | None, ...]) -> bool:
    return len(shape) == len(declared) and all(
        d is None or d == s for s, d in zip(shape, declared, strict=True)
    )


class EgressGuard:
    """Checks the outgoing messages of one site against their schema, then their content."""

    def __init__(
        self,
        site: str,
        blocklist: Blocklist,
        mode: str = "strict",
        budgets: dict[str, int] | None = None,
        windows: WindowIndex | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"privacy mode {mode!r}: expected one of {', '.join(MODES)}")
        self.site = site
        self.blocklist = blocklist
        self.windows = windows
        self.mode = mode
        self.budgets = {**DEFAULT_BUDGETS, **(budgets or {})}
        self.checked_messages = 0
        self.checked_bytes = 0
        self.checked_arrays = 0
        self.seconds = 0.0
        self.build_seconds = 0.0
        self.violations: list[Violation] = []
        #: called with each violation as it is recorded (the site writes it to its own log)
        self.on_violation: Callable[[Violation], None] | None = None
        self._undeclared = 0

    # -- first line: the schema -----------------------------------------------------------
    def _name(self, key: str, declared: bool) -> str:
        """The key as a violation may show it: itself if declared, else a placeholder."""
        if declared:
            return key
        self._undeclared += 1
        return f"<undeclared #{self._undeclared}, {len(key)} chars>"

    def _schema_problems(self, rd: RecordDict, schema: Schema) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        meta = dict(rd["meta"]) if "meta" in rd.config_records else {}
        if (
            kind_of(rd) != schema.kind
            or meta.get("src") != schema.src
            or meta.get("dst") not in schema.dsts
        ):
            return [
                (
                    "meta",
                    "kind",
                    f"a {schema.kind!r} message from {schema.src} to one of "
                    f"{', '.join(schema.dsts)} was declared",
                )
            ]
        if set(meta) != {"kind", "src", "dst"}:
            out.append(("meta", "schema", f"{len(meta)} meta keys; expected kind, src, dst"))
        groups = schema.array_groups()
        for name in rd.keys():
            if name not in (*RESERVED, *groups, *schema.records):
                out.append(
                    (self._name(name, False), "schema", "a record the schema does not declare")
                )
        got = {
            f"{g}/{k}": a
            for g, rec in rd.array_records.items()
            if g in groups
            for k, a in rec.items()
        }
        for key, arr in got.items():
            if key not in schema.arrays:
                out.append(
                    (self._name(key, False), "schema", "an array the schema does not declare")
                )
                continue
            shape, dtype = schema.arrays[key]
            if not _shape_ok(tuple(arr.shape), shape) or str(arr.dtype) != dtype:
                out.append(
                    (
                        key,
                        "schema",
                        f"shape {tuple(arr.shape)} {arr.dtype}; declared {shape} {dtype}",
                    )
                )
        for key in sorted(set(schema.arrays) - set(got)):
            out.append((key, "schema", "a declared array is missing"))
        out += self._scalar_problems(rd, schema)
        return out

    def _scalar_problems(self, rd: RecordDict, schema: Schema) -> list[tuple[str, str, str]]:
        out = []
        if "metrics" in rd.metric_records:
            for key, value in rd["metrics"].items():
                rule = schema.metrics.get(key)
                if rule is None:
                    out.append(
                        (
                            f"metrics/{self._name(key, False)}",
                            "schema",
                            "a metric the schema does not declare",
                        )
                    )
                elif (
                    not isinstance(value, (int, float))
                    or not np.isfinite(value)
                    or not rule.lo <= value <= rule.hi
                ):
                    out.append(
                        (
                            f"metrics/{key}",
                            "range",
                            f"outside the declared range [{rule.lo:g}, {rule.hi:g}]",
                        )
                    )
        tables = {"config": schema.config, **schema.records}
        for name, record in rd.config_records.items():
            if name == "meta" or name not in tables:
                continue
            for key, value in record.items():
                allowed = (
                    tables[name].get(key)
                    if name == "config"
                    else tables[name].get(key.split(".", 1)[-1])
                )
                where = (
                    f"{name}/{key}" if allowed is not None else f"{name}/{self._name(key, False)}"
                )
                if allowed is None:
                    out.append((where, "schema", "a config key the schema does not declare"))
                elif isinstance(allowed, tuple):
                    if not isinstance(value, str) or value not in allowed:
                        out.append((where, "schema", "a string outside its declared enumeration"))
                elif not isinstance(value, allowed) or isinstance(value, bool) != (allowed is bool):
                    out.append(
                        (where, "schema", f"a value that is not a declared {allowed.__name__}")
                    )
        return out

    # -- second line: the content ---------------------------------------------------------
    def _content_problems(self, rd: RecordDict, schema: Schema) -> list[tuple[str, str, str]]:
        out = []
        kind = kind_of(rd)
        for group, record in rd.array_records.items():
            for key, arr in record.items():
                a = arr.numpy()
                self.checked_arrays += 1
                hits = (
                    self.blocklist.match_all(a)
                    if self.mode == "record"
                    else [self.blocklist.match(a)]
                )
                hits = [h_ for h_ in hits if h_]
                out += [(f"{group}/{key}", rule, detail) for rule, detail in hits]
                if not hits and self.windows is not None and a.dtype.kind == "f":
                    at = self.windows.find(a)
                    if at is not None:
                        out.append(
                            (
                                f"{group}/{key}",
                                "offset-copy",
                                f"values {at}-{at + 15} copy a run of real pixel or mask values",
                            )
                        )
        if self.windows is not None and "metrics" in rd.metric_records:
            items = [(k, float(v)) for k, v in rd["metrics"].items() if isinstance(v, (int, float))]
            at = self.windows.find(np.array([v for _, v in items]))
            if at is not None:  # every metric of the run is an offending entry
                out += [
                    (
                        f"metrics/{self._name(k, k in schema.metrics)}",
                        "scalar-run",
                        f"metric values {at}-{at + 15} copy a run of real values",
                    )
                    for k, _ in items[at : at + 16]
                ]
        nbytes = describe(rd)["bytes"]
        if nbytes > self.budgets.get(kind, 0):
            out.append(
                (
                    "arrays",
                    "budget",
                    f"{nbytes} array bytes exceed the {kind} budget of {self.budgets.get(kind, 0)}",
                )
            )
        return out

    # -- the check ------------------------------------------------------------------------
    def check(self, rd: RecordDict, schema: Schema) -> RecordDict:
        """Return the message if it may leave (``warn``: with the offending entries removed), its
        metric values rounded to their declared resolutions."""
        if self.mode == "off":
            return rd
        t0 = time.perf_counter()
        try:
            problems = self._schema_problems(rd, schema)
            self._record(rd, schema, problems)
            if not any(rule == "kind" for _, rule, _ in problems):
                if (
                    self.mode == "warn" and problems
                ):  # what is left after the schema's removals is checked
                    self._remove(rd, schema, problems)
                    problems = []
                content = self._content_problems(rd, schema)
                self._record(rd, schema, content)
                problems += content
            if self.mode == "warn" and problems:
                self._remove(rd, schema, problems)
            self._round(rd, schema)
            self.checked_messages += 1
            self.checked_bytes += describe(rd)["bytes"]
            return rd
        finally:
            self.seconds += time.perf_counter() - t0

    def _record(self, rd: RecordDict, schema: Schema, problems: list[tuple[str, str, str]]) -> None:
        """Record each violation; in strict mode the first one stops the message."""
        kind = str(rd["meta"]["kind"]) if "meta" in rd.config_records else "?"
        action = {"strict": "stopped", "warn": "blocked", "record": "allowed (non-private method)"}[
            self.mode
        ]
        for key, rule, detail in problems:
            v = Violation(
                self.site, kind if kind == schema.kind else "other", key, rule, detail, action
            )
            self.violations.append(v)
            if self.on_violation is not None:
                self.on_violation(v)
            if self.mode == "strict":
                raise EgressViolation(self.site, key, rule, detail, v.kind)

    @staticmethod
    def _round(rd: RecordDict, schema: Schema) -> None:
        if "metrics" not in rd.metric_records:
            return
        rec = rd["metrics"]
        for key in list(rec.keys()):
            rule = schema.metrics.get(key)
            if rule is not None and isinstance(rec[key], float) and np.isfinite(rec[key]):
                rec[key] = float(
                    np.clip(round(rec[key] / rule.quantum) * rule.quantum, rule.lo, rule.hi)
                )

    def _remove(self, rd: RecordDict, schema: Schema, problems: list[tuple[str, str, str]]) -> None:
        """Warn mode: remove each offending entry (found again by content, since undeclared keys
        are not named), and nothing else."""
        if any(
            rule == "kind" for _, rule, _ in problems
        ):  # a message of the wrong kind: nothing goes
            for name in [n for n in rd.keys() if n != "meta"]:
                del rd[name]
            return
        groups = schema.array_groups()
        for name in [n for n in rd.keys() if n not in (*RESERVED, *groups, *schema.records)]:
            del rd[name]
        for group in [g for g in rd.array_records.keys() if g in groups]:
            for key in list(rd[group].keys()):
                if f"{group}/{key}" not in schema.arrays:
                    del rd[group][key]
        named = {k for k, _, _ in problems}
        for group in list(rd.array_records.keys()):
            for key in list(rd[group].keys()):
                if f"{group}/{key}" in named:
                    del rd[group][key]
        if "metrics" in rd.metric_records:
            for key in list(rd["metrics"].keys()):
                if key not in schema.metrics or f"metrics/{key}" in named:
                    del rd["metrics"][key]
        tables = {"config": schema.config, **schema.records}
        for name in [n for n in rd.config_records.keys() if n != "meta"]:
            for key in list(rd[name].keys()):
                col = key if name == "config" else key.split(".", 1)[-1]
                if col not in tables.get(name, {}) or f"{name}/{key}" in named:
                    del rd[name][key]

    def counts(self) -> dict[str, float]:
        """What the guard checked and the violations it recorded, as named counts only: per
        message kind and rule (the keys and details of violations stay in the site's own log)."""
        out: dict[str, float] = {
            "checked_messages": self.checked_messages,
            "checked_bytes": self.checked_bytes,
            "checked_arrays": self.checked_arrays,
            "seconds": self.seconds,
            "build_seconds": self.build_seconds,
            "violations": len(self.violations),
        }
        for v in self.violations:
            name = f"violations/{v.kind}/{v.rule}"
            out[name] = out.get(name, 0) + 1
        return out

    def restore_counts(self, counts: dict[str, float]) -> None:
        """Continue from :meth:`counts` of an earlier process of the same site (a Flower node
        answers each message in a new process); the violations are kept as counts only."""
        for k in ("checked_messages", "checked_bytes", "checked_arrays"):
            setattr(self, k, int(counts.get(k, 0)))
        self.seconds = float(counts.get("seconds", 0.0))
        self.violations = [
            Violation(self.site, *name.split("/")[1:3], "", "", "")
            for name, n in counts.items()
            if name.startswith("violations/")
            for _ in range(int(n))
        ]
