"""The egress guard: every message a site sends is checked before it leaves.

Rules, each named in a violation:

* ``kind``     the message declares one of the egress kinds (prompt, model, metrics);
* ``exact``, ``near-duplicate``, ``crop``
               no array holds one of the site's real images or masks (see
               :mod:`sites.blocklist`), in any dtype, flattened, reshaped, rescaled,
               shifted, transposed or cropped;
* ``shape``    no array of a ``prompt`` or ``metrics`` message has an image-sized
               trailing slice or a multiple of an image's element count;
* ``scalar``   config and metric values are scalars, strings are short and hold
               few numbers, and a message carries a bounded number of them;
* ``budget``   the array bytes of each kind stay within a per-kind budget.

Modes: ``strict`` (default) raises :class:`EgressViolation`, which stops the run;
``warn`` removes (blocks) the offending entry, records the violation and lets the
message go; ``record`` lets it go unchanged and records it (only for the
non-private reference methods, whose audit then fails); ``off`` checks nothing
(for measuring the guard's cost only).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass

from flwr.app import RecordDict

from simulator.errors import EgressViolation
from simulator.messages import EGRESS_KINDS, describe, kind_of
from sites.blocklist import Blocklist

DEFAULT_BUDGETS = {"prompt": 1 << 20, "model": 256 << 20, "metrics": 1 << 20}
MAX_STRING = 1024
MAX_NUMBERS_IN_STRING = 32
MAX_SCALARS = 256
MODES = ("strict", "warn", "record", "off")
_NUMBER = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")


@dataclass
class Violation:
    """One recorded violation."""

    site: str
    kind: str
    key: str
    rule: str
    detail: str
    action: str


class EgressGuard:
    """Checks the outgoing messages of one site."""

    def __init__(self, site: str, blocklist: Blocklist, mode: str = "strict",
                 budgets: dict[str, int] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"privacy mode {mode!r}: expected one of {', '.join(MODES)}")
        self.site = site
        self.blocklist = blocklist
        self.image_shape = blocklist.shape
        self.mode = mode
        self.budgets = {**DEFAULT_BUDGETS, **(budgets or {})}
        self.checked_messages = 0
        self.checked_bytes = 0
        self.checked_arrays = 0
        self.seconds = 0.0
        self.build_seconds = 0.0
        self.violations: list[Violation] = []

    def _problems(self, rd: RecordDict) -> list[tuple[str, str, str]]:
        kind = kind_of(rd)
        if kind not in EGRESS_KINDS:
            return [("meta/kind", "kind", f"{kind!r} is not one of {EGRESS_KINDS}")]
        out = []
        h, w = self.image_shape
        for group, record in rd.array_records.items():
            for key, arr in record.items():
                a = arr.numpy()
                self.checked_arrays += 1
                hits = self.blocklist.match_all(a) if self.mode == "record" else [self.blocklist.match(a)]
                hits = [h_ for h_ in hits if h_]
                if hits:
                    out += [(f"{group}/{key}", rule, detail) for rule, detail in hits]
                    continue
                if kind != "model" and a.ndim >= 2 and a.shape[-2:] in ((h, w), (w, h)):
                    out.append((f"{group}/{key}", "shape", f"array of shape {a.shape} has an image-sized slice"))
                elif kind != "model" and a.size and a.size % (h * w) == 0:
                    out.append((f"{group}/{key}", "shape", f"{kind} array of {a.size} elements could hold images"))
        n_scalars = 0
        for name, record in rd.config_records.items():
            for key, value in record.items():
                n_scalars += 1
                if isinstance(value, (list, bytes)):
                    out.append((f"{name}/{key}", "scalar", "config values leaving a site must be scalars"))
                elif isinstance(value, str) and (len(value) > MAX_STRING
                                                 or len(_NUMBER.findall(value)) > MAX_NUMBERS_IN_STRING):
                    out.append((f"{name}/{key}", "scalar", "a long or number-laden string may not leave a site"))
        for name, record in rd.metric_records.items():
            for key, value in record.items():
                n_scalars += 1
                if isinstance(value, list):
                    out.append((f"{name}/{key}", "scalar", "metrics leaving a site must be scalars"))
        if n_scalars > MAX_SCALARS:
            out.append(("*", "budget", f"{n_scalars} scalars exceed the limit of {MAX_SCALARS} per message"))
        nbytes = describe(rd)["bytes"]
        if nbytes > self.budgets[kind]:
            out.append(("*", "budget", f"{nbytes} bytes exceed the {kind} budget of {self.budgets[kind]}"))
        return out

    def check(self, rd: RecordDict) -> RecordDict:
        """Return the message if it may leave (``warn``: with offending entries removed)."""
        if self.mode == "off":
            return rd
        t0 = time.perf_counter()
        try:
            problems = self._problems(rd)
            kind = rd["meta"]["kind"] if "meta" in rd.config_records else "?"
            for key, rule, detail in problems:
                action = {"strict": "stopped", "warn": "blocked", "record": "allowed (non-private method)"}
                self.violations.append(Violation(self.site, str(kind), key, rule, detail, action[self.mode]))
                if self.mode == "strict":
                    raise EgressViolation(self.site, key, rule, detail)
                if self.mode == "warn":
                    self._remove(rd, key)
            self.checked_messages += 1
            self.checked_bytes += describe(rd)["bytes"]
            return rd
        finally:
            self.seconds += time.perf_counter() - t0

    @staticmethod
    def _remove(rd: RecordDict, key: str) -> None:
        if key == "*" or key == "meta/kind":
            for group in list(rd.array_records.keys()):
                del rd[group]
            return
        group, name = key.split("/", 1)
        del rd[group][name]

    def report(self) -> dict:
        """Counts, time and violations (for the privacy audit)."""
        return {"site": self.site, "mode": self.mode, "checked_messages": self.checked_messages,
                "checked_bytes": self.checked_bytes, "checked_arrays": self.checked_arrays,
                "seconds": self.seconds, "build_seconds": self.build_seconds, "violations": [asdict(v) for v in self.violations]}
