"""Injected faults, for tests and demos of recovery: which process dies, and when.

* ``kill-site:NAME@STAGE``: the site's process is killed during that stage: during its visit
  if it is the visited site, otherwise during its evaluation. Ray restarts it
  (``runtime.site_restarts``), the site rebuilds its data from its spec, and the engine repeats
  the interrupted visit or evaluation from the stage's inputs, so the results do not change.
* ``kill-driver@STAGE``: the driver process exits right after that stage's checkpoint, as a
  crash would (no clean-up); ``smg-sim resume RUN_DIR`` continues the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from simulator.errors import ConfigError

_FAULT = re.compile(r"^(kill-site):([A-Za-z0-9_.-]+)@(\d+)$|^(kill-driver)@(\d+)$")


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``kind`` kill-site (of ``site``) or kill-driver, at ``stage``."""

    kind: str
    stage: int
    site: str | None = None


def parse_faults(text: str, order: list[str]) -> tuple[Fault, ...]:
    """The faults of ``runtime.inject_fault``, each checked against the run's sites and stages."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        m = _FAULT.match(item)
        if not m:
            raise ConfigError(
                f"runtime.inject_fault: {item!r} is not a fault; expected kill-site:NAME@STAGE "
                f"or kill-driver@STAGE"
            )
        fault = Fault("kill-site", int(m[3]), m[2]) if m[1] else Fault("kill-driver", int(m[5]))
        if not 1 <= fault.stage <= len(order):
            raise ConfigError(
                f"runtime.inject_fault: {item!r}: stage {fault.stage} is out of range; "
                f"expected 1 <= stage <= {len(order)}"
            )
        if fault.site is not None and fault.site not in order:
            raise ConfigError(
                f"runtime.inject_fault: {item!r}: {fault.site!r} is not a site of this run; "
                f"expected one of {', '.join(order)}"
            )
        out.append(fault)
    return tuple(out)


class FaultPlan:
    """The faults still to inject; each fires once."""

    def __init__(self, faults: tuple[Fault, ...] = ()) -> None:
        self.pending = list(faults)

    def take(self, kind: str, stage: int, site: str | None = None) -> bool:
        """True (once) if a fault of ``kind`` is planned for this stage (and site)."""
        for f in self.pending:
            if f.kind == kind and f.stage == stage and (site is None or f.site == site):
                self.pending.remove(f)
                return True
        return False

    def sites_to_kill(self, stage: int) -> list[str]:
        return [
            f.site for f in self.pending if f.kind == "kill-site" and f.stage == stage and f.site
        ]
