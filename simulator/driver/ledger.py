"""The message ledger: one JSON line per message that crosses a site boundary."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import RecordDict

from simulator.messages import describe


class Ledger:
    """Appends one line per crossing: time, source, destination, kind, keys, shapes, bytes, sha256."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.count = 0
        self.bytes = 0
        #: the entry written last (what the ledger recorded of the latest crossing)
        self.last: dict = {}
        self._fh = self.path.open("a", encoding="utf-8")

    def record(self, rd: RecordDict, src: str | None = None, dst: str | None = None) -> None:
        """Record one crossing; ``src``/``dst`` override the message's own (for broadcasts)."""
        entry = {"seq": self.count, "time": time.time(), **describe(rd)}
        if src:
            entry["src"] = src
        if dst:
            entry["dst"] = dst
        self._fh.write(json.dumps(entry, sort_keys=True) + "\n")
        self._fh.flush()
        self.count += 1
        self.bytes += entry["bytes"]
        self.last = entry

    def close(self) -> None:
        self._fh.close()


def read_ledger(path: Path) -> list[dict]:
    """All entries of a ledger file."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
