"""File-access trace: a Python audit hook (PEP 578) that records opens under data folders.

Each process of a run (driver, learner, every site) installs the hook once and
points it at its own trace file with its role. Every ``open`` of a path under one
of the watched data folders is appended as a JSON line: time, role, pid, path,
mode. The privacy audit reads these files to show which processes opened which
site's data.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

_state = {"installed": False, "sink": None, "role": None, "roots": (), "busy": threading.local()}
_lock = threading.Lock()


def _hook(event: str, args: tuple) -> None:
    if event != "open" or _state["sink"] is None:
        return
    busy = _state["busy"]
    if getattr(busy, "on", False):
        return
    path = args[0]
    if not isinstance(path, (str, bytes, os.PathLike)):
        return
    try:
        busy.on = True
        p = os.path.abspath(os.fsdecode(path))
        if not any(p == r or p.startswith(r + os.sep) for r in _state["roots"]):
            return
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
        line = json.dumps({"time": time.time(), "role": _state["role"], "pid": os.getpid(), "path": p,
                           "mode": mode})
        with _lock:
            _state["sink"].write(line + "\n")
            _state["sink"].flush()
    finally:
        busy.on = False


def start_trace(trace_file: str | Path, role: str, roots: list[str | Path]) -> None:
    """Record opens under ``roots`` by this process, as ``role``, into ``trace_file``."""
    if not _state["installed"]:
        sys.addaudithook(_hook)
        _state["installed"] = True
    stop_trace()
    Path(trace_file).parent.mkdir(parents=True, exist_ok=True)
    _state["busy"].on = True
    try:
        _state["sink"] = open(trace_file, "a", encoding="utf-8")  # noqa: SIM115 - kept open while tracing
    finally:
        _state["busy"].on = False
    _state["role"] = role
    _state["roots"] = tuple(os.path.abspath(str(r)) for r in roots)


def stop_trace() -> None:
    """Stop recording in this process (the hook stays installed but idle)."""
    sink = _state["sink"]
    _state["sink"] = None
    if sink is not None:
        sink.close()


def read_trace(folder: Path) -> list[dict]:
    """All trace lines of a run's ``file_access`` folder."""
    out = []
    for f in sorted(Path(folder).glob("*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out
