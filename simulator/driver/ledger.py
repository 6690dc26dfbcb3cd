"""The message ledger: one JSON line per message that crosses a site boundary."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import RecordDict

from simulator.messages import describe


class Ledger:
    """Appends one line per crossing: time, source, destination, kind, keys, shapes, bytes,
    sha256."""

    def __init__(self, path: Path, count: int = 0, total_bytes: int = 0) -> None:
        """Append to ``path``; ``count``/``total_bytes``: what it already holds (a resumed run)."""
        self.path = Path(path)
        self.count = count
        self.bytes = total_bytes
        #: the entry written last (what the ledger recorded of the latest crossing)
        self.last: dict = {}
        #: called with every entry written (the engine counts each site's traffic for the dashboard)
        self.on_record: Callable[[dict], None] | None = None
        self._fh = self.path.open("a", encoding="utf-8")

    def record(
        self, rd: RecordDict, src: str | None = None, dst: str | None = None, retry: int = 0
    ) -> None:
        """Record one crossing; ``src``/``dst`` override the message's own (for broadcasts).

        ``retry``: the how-manieth repetition of an interrupted call this crossing belongs to
        (0: a first attempt); repeated crossings are marked so, and counted like the others.
        """
        entry = {"seq": self.count, "time": time.time(), **describe(rd)}
        if src:
            entry["src"] = src
        if dst:
            entry["dst"] = dst
        if retry:
            entry["retry"] = retry
        self._fh.write(json.dumps(entry, sort_keys=True) + "\n")
        self._fh.flush()
        self.count += 1
        self.bytes += entry["bytes"]
        self.last = entry
        if self.on_record is not None:
            self.on_record(entry)

    def offset(self) -> int:
        """Bytes written so far (where a checkpoint cuts the file)."""
        self._fh.flush()
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()


def read_ledger(path: Path) -> list[dict]:
    """All entries of a ledger file."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
