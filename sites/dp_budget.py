"""A site's differential-privacy budget per data set, across runs.

Every DP mechanism a site runs on a data set (a prompt's DP-SGD tuning, a visit's DP-SGD
training) is recorded in a ledger in the site's own folder, ``dp-ledger-<fingerprint>.json``,
keyed by a fingerprint of the data set (:func:`data_fingerprint`: its spec for a generated
benchmark, the digests of its files for a user's data set, computed without decoding an image).
The ledger composes the mechanisms of every run in RDP (Opacus's accountant) into the epsilon
spent on that data set, converted at the delta of its first charge.

* **Charges** are reservations, made before the mechanism runs, under an exclusive lock on the
  ledger (parallel runs share a site's folder) and written atomically; each is keyed by the
  digest of the request that asked for it, so a byte-identical request (a resumed run, a retried
  visit) is not charged twice and any other request is.
* **The cap** ``dp_budget`` (the site's own setting; 0: none): a charge that would take the
  composed total past it is refused (``dp-budget``), and so is, at the settings check that starts
  a run and before any image is decoded, a run whose whole ``dp_epsilon`` added to what is
  spent would pass it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simulator.benchmarks import catalog
from simulator.dp import composed_epsilon
from simulator.payloads import SiteSpec
from sites.refusals import SiteRefusal

Mechanism = tuple[float, float, int]  # noise multiplier, sampling rate, steps


def data_fingerprint(spec: SiteSpec) -> str:
    """A digest of the data set a site holds, computed without decoding any image: a generated
    benchmark's spec (it determines every pixel), or every file of a user's site folder (names
    and bytes; the site's own dot-folders left out)."""
    h = hashlib.sha256()
    if spec.benchmark not in catalog.USER_LAYOUTS or not spec.data_dir:  # a spec holds the kind
        fields = {k: v for k, v in dataclasses.asdict(spec).items() if k != "data_dir"}
        h.update(json.dumps(fields, sort_keys=True).encode())
        return "spec-" + h.hexdigest()[:32]
    root = Path(spec.data_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(rel.as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return "files-" + h.hexdigest()[:32]


class DatasetBudget:
    """The ledger of one data set at one site (in memory for a site without a folder)."""

    def __init__(self, folder: Path | None, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.path = folder / f"dp-ledger-{fingerprint}.json" if folder is not None else None
        self._memory: dict[str, Any] = {"charges": {}}

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The ledger, read under an exclusive lock and written back atomically on exit."""
        if self.path is None:
            yield self._memory
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                book = json.loads(self.path.read_text()) if self.path.exists() else {"charges": {}}
                before = json.dumps(book, sort_keys=True)
                yield book
                if json.dumps(book, sort_keys=True) != before:
                    tmp = self.path.with_suffix(f".tmp{os.getpid()}")
                    tmp.write_text(json.dumps(book, sort_keys=True, indent=1))
                    os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _history(book: dict[str, Any]) -> list[Mechanism]:
        return [tuple(m) for charge in book["charges"].values() for m in charge["mechanisms"]]

    def spent(self) -> tuple[float, float]:
        """The epsilon spent on this data set so far, and the delta it is stated at (0, 0 when
        nothing is)."""
        with self._locked() as book:
            if not book["charges"]:
                return 0.0, 0.0
            return composed_epsilon(self._history(book), book["delta"]), float(book["delta"])

    def charge(
        self,
        key: str,
        mechanisms: list[Mechanism],
        delta: float,
        cap: float,
        run: str,
        run_cap: float,
    ) -> float:
        """Reserve ``mechanisms`` for the request ``key`` of run ``run`` (free if already
        reserved); returns the data set's composed epsilon with them. Refused (``dp-budget``) if
        the run's own mechanisms would pass ``run_cap`` at ``delta`` (the site's per-run epsilon:
        a learner that asks for a second prompt or a second visit gets no more), or the data set's
        past ``cap`` (0: none)."""
        with self._locked() as book:
            book.setdefault("delta", float(delta))
            conv = float(book["delta"])
            history = self._history(book)
            if key in book["charges"]:
                return composed_epsilon(history, conv)
            ours = [
                tuple(m)
                for c in book["charges"].values()
                if c["run"] == run
                for m in c["mechanisms"]
            ]
            in_run = composed_epsilon(ours + list(mechanisms), delta)
            if run_cap > 0 and in_run > run_cap * (1 + 1e-6):
                raise SiteRefusal(
                    "dp-budget",
                    f"run {run}: its DP mechanisms would spend epsilon {in_run:.3g} > "
                    f"dp_epsilon {run_cap:g} (delta {delta:.3g})",
                )
            total = composed_epsilon(history + list(mechanisms), conv)
            if cap > 0 and total > cap * (1 + 1e-9):
                spent = composed_epsilon(history, conv) if history else 0.0
                asked = composed_epsilon(list(mechanisms), conv)
                raise SiteRefusal(
                    "dp-budget",
                    f"data set {self.fingerprint}: spent epsilon {spent:.3g}, this request "
                    f"{asked:.3g}, together {total:.3g} > dp_budget {cap:g} (delta {conv:.3g})",
                )
            book["charges"][key] = {"run": run, "mechanisms": [list(m) for m in mechanisms]}
            return total

    def check_run(self, epsilon: float, cap: float) -> None:
        """Refuse (``dp-budget``) a run whose whole ``epsilon`` added to what is spent would pass
        ``cap`` (0: none): before the run decodes any image."""
        if cap <= 0 or epsilon <= 0:
            return
        spent, _ = self.spent()
        if spent + epsilon > cap * (1 + 1e-9):
            raise SiteRefusal(
                "dp-budget",
                f"data set {self.fingerprint}: spent epsilon {spent:.3g}, this run asks up to "
                f"{epsilon:g}, together more than dp_budget {cap:g}",
            )
