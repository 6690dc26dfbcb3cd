"""What a site keeps about itself from one process to the next, in its own folder: its secret,
and what each run has spent of its budgets.

* **The secret**: 32 bytes from the operating system's entropy, made once and kept in
  ``<data_dir>/.smg-sim-site/secret`` (mode 0600). The randomness of the site's DP mechanism is a
  keyed pseudo-random function (HMAC-SHA256) of this secret and the digest of the whole request:
  identical requests get identical noise (a retried visit, a resumed run, so results stay
  byte-identical), any change to a request gets independent noise, and nothing a learner writes
  into a request seeds the mechanism. The secret and the generators made from it never enter a
  message, a checkpoint or the run folder.
* **A run's spending** (``budget-<run>.json``): the scalar bits the site has sent the learner,
  one entry per reply, keyed by the request that asked for it and where the visit stood; and the
  requests each declared query operation has answered. A request identical to one already
  answered is answered again at no further cost (its answer carries nothing new); every other
  request is counted, and refused once the site's cap would be passed.

A site whose data lives in memory only (no ``data_dir``) keeps both in memory: a new process
starts with a new secret and a new budget.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from sites.refusals import SiteRefusal

#: the site's own folder for its secret and its budgets, inside its data folder
STATE_DIR = ".smg-sim-site"


def _slug(run: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run)[:120] or "node"


class SiteState:
    """The secret and the budgets of one site (see the module's docstring)."""

    def __init__(self, data_dir: str, run: str) -> None:
        self.folder = Path(data_dir) / STATE_DIR if data_dir else None
        self.run = _slug(run)
        self._secret: bytes | None = None
        self._book: dict[str, Any] | None = None

    # -- the secret ------------------------------------------------------------------------
    def secret(self) -> bytes:
        """This site's secret, made from OS entropy the first time it is needed."""
        if self._secret is None:
            self._secret = self._read_or_make_secret()
        return self._secret

    def _read_or_make_secret(self) -> bytes:
        if self.folder is None:
            return os.urandom(32)
        path = self.folder / "secret"
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            fd = -1
        if fd < 0:
            data = path.read_bytes()
            if len(data) != 32:
                raise SiteRefusal("internal", f"{path}: a site secret of {len(data)} bytes")
            return data
        secret = os.urandom(32)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret)
        return secret

    def keyed_seed(self, purpose: str, digest: str) -> int:
        """A 63-bit seed: HMAC-SHA256 of the secret over ``purpose`` and a request's digest."""
        mac = hmac.new(self.secret(), f"{purpose}\0{digest}".encode(), hashlib.sha256).digest()
        return int.from_bytes(mac[:8], "big") >> 1

    def keyed_generator(self, purpose: str, digest: str) -> torch.Generator:
        """A CPU generator seeded by :meth:`keyed_seed` (the DP mechanism's randomness)."""
        gen = torch.Generator()
        gen.manual_seed(self.keyed_seed(purpose, digest))
        return gen

    # -- a run's spending --------------------------------------------------------------------
    def _path(self) -> Path | None:
        return self.folder / f"budget-{self.run}.json" if self.folder else None

    def book(self) -> dict[str, Any]:
        """What this run has spent: ``bits`` (reply key -> [kind, bits]) and ``queries``."""
        if self._book is None:
            path = self._path()
            self._book = {"bits": {}, "queries": {}}
            if path is not None and path.exists():
                self._book = json.loads(path.read_text())
        return self._book

    def _save(self) -> None:
        path = self._path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.book(), sort_keys=True))
        os.replace(tmp, path)

    def spent(self) -> float:
        """Scalar bits sent to the learner in this run so far."""
        return float(sum(bits for _, bits in self.book()["bits"].values()))

    def answered(self, key: str) -> bool:
        return key in self.book()["bits"]

    def charge(self, key: str, kind: str, bits: float, cap: float, enforce: bool = True) -> None:
        """Count the reply ``key`` of ``bits``; refused (``scalar-budget``) if it would pass
        ``cap``. A key already counted costs nothing again."""
        book = self.book()
        if key in book["bits"]:
            return
        if enforce and self.spent() + bits > cap:
            raise SiteRefusal(
                "scalar-budget", f"{bits:.0f} more bits would pass the cap of {cap:.0f}"
            )
        book["bits"][key] = [kind, round(bits, 3)]
        self._save()

    def guard_counts(self) -> dict[str, float] | None:
        """The egress guard's counts this run kept (from an earlier process of the site)."""
        return self.book().get("guard")

    def keep_guard_counts(self, counts: dict[str, float]) -> None:
        self.book()["guard"] = counts
        self._save()

    def next_sequence(self) -> int:
        """A number no earlier reply of this run had (for replies that say something new each
        time they are asked: the guard's report, timings)."""
        book = self.book()
        book["sequence"] = int(book.get("sequence", 0)) + 1
        return book["sequence"]

    def query(self, op: str, digest: str, limit: int) -> None:
        """Count one answer of the declared query ``op`` (an identical request again is free);
        refused (``query-budget``) beyond ``limit`` per run."""
        used = self.book()["queries"].setdefault(op, [])
        if digest in used:
            return
        if len(used) >= limit:
            raise SiteRefusal("query-budget", f"{op}: {limit} per run, all used")
        used.append(digest)
        self._save()
