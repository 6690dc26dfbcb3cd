"""The egress guard: what may leave a site, checked on every outgoing message.

Rules applied to every message a site returns:

* ``kind``  the message declares one of the egress kinds (prompt, model, metrics);
* ``shape`` no array has a trailing 2-D slice of the site's image size (either
  orientation), and no array of a non-model kind has as many elements as an image;
* ``scalar`` config values are scalars or short strings, metrics are scalars;
* ``budget`` the array bytes of each kind stay within a per-kind budget.

A violation raises :class:`EgressViolation`, naming the site, the key and the rule.
"""

from __future__ import annotations

from flwr.app import RecordDict

from simulator.messages import EGRESS_KINDS, describe, kind_of

DEFAULT_BUDGETS = {"prompt": 1 << 20, "model": 256 << 20, "metrics": 64 << 10}
MAX_STRING = 4096


class EgressViolation(RuntimeError):
    """A site tried to send something that may not leave it."""

    def __init__(self, site: str, key: str, rule: str, detail: str) -> None:
        self.site, self.key, self.rule = site, key, rule
        super().__init__(f"privacy guard: site {site!r} blocked {key!r} (rule {rule}): {detail}")


class EgressGuard:
    """Checks outgoing messages of one site against the rules above."""

    def __init__(self, site: str, image_shape: tuple[int, int], budgets: dict[str, int] | None = None):
        self.site = site
        self.image_shape = tuple(image_shape)
        self.budgets = {**DEFAULT_BUDGETS, **(budgets or {})}
        self.checked_messages = 0
        self.checked_bytes = 0

    def check(self, rd: RecordDict) -> RecordDict:
        """Return ``rd`` unchanged if it may leave, else raise :class:`EgressViolation`."""
        kind = kind_of(rd)
        if kind not in EGRESS_KINDS:
            raise EgressViolation(self.site, "meta/kind", "kind", f"{kind!r} is not one of {EGRESS_KINDS}")
        h, w = self.image_shape
        info = describe(rd)
        for entry in info["arrays"]:
            shape = tuple(entry["shape"])
            if len(shape) >= 2 and shape[-2:] in ((h, w), (w, h)):
                raise EgressViolation(self.site, entry["key"], "shape",
                                      f"array of shape {shape} has an image-sized trailing slice")
            n = 1
            for s in shape:
                n *= s
            if kind != "model" and n % (h * w) == 0 and n > 0:
                raise EgressViolation(self.site, entry["key"], "shape",
                                      f"{kind} array of {n} elements could hold whole images")
        for name, record in rd.config_records.items():
            for key, value in record.items():
                if isinstance(value, (list, bytes)) or (isinstance(value, str) and len(value) > MAX_STRING):
                    raise EgressViolation(self.site, f"{name}/{key}", "scalar",
                                          "config values leaving a site must be scalars or short strings")
        for name, record in rd.metric_records.items():
            for key, value in record.items():
                if isinstance(value, list):
                    raise EgressViolation(self.site, f"{name}/{key}", "scalar",
                                          "metrics leaving a site must be scalars")
        if info["bytes"] > self.budgets[kind]:
            raise EgressViolation(self.site, "*", "budget",
                                  f"{info['bytes']} bytes exceed the {kind} budget of {self.budgets[kind]}")
        self.checked_messages += 1
        self.checked_bytes += info["bytes"]
        return rd
