"""File-access trace: a Python audit hook (PEP 578) that records file access under data folders.

Each process that can touch site data (driver, learner, every site of a run, and the site
actors of ``data inspect`` and ``data preview``) installs the hook once and points it at its
own trace file with its role. Every ``open`` of a path under one of the watched data folders,
and every directory listing, removal and rename there, is appended as a JSON line: time, role,
pid, path (resolved: symlinks and relative paths followed), mode or event, and the watched folder
it lies in (a deployed node watches its own data folder, which the learner's side does not know).
The privacy audit
reads these files to show which processes touched which site's data.

Access from C code raises no Python audit event (``cv2.imread``/``cv2.imwrite`` open files
themselves): the readers read bytes in Python and decode them, and any other C-level access is
written down with :func:`record`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_state = {
    "installed": False,
    "sink": None,
    "file": "",
    "role": None,
    "roots": (),
    "busy": threading.local(),
}
_lock = threading.Lock()


#: the audit events recorded besides ``open``, and the name each is recorded under
_EVENTS = {
    "os.listdir": "list",
    "os.scandir": "list",
    "os.remove": "remove",
    "os.rename": "rename",
    "os.rmdir": "remove",
    "os.mkdir": "mkdir",
}


def _write(path: object, mode: str, anywhere: bool = False) -> None:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return
    p = os.path.realpath(os.fsdecode(path))
    root = next((r for r in _state["roots"] if p == r or p.startswith(r + os.sep)), None)
    if root is None and not anywhere:
        return
    entry = {
        "time": time.time(),
        "role": _state["role"],
        "pid": os.getpid(),
        "path": p,
        "mode": mode,
    }
    if (
        root is not None
    ):  # the data folder it lies in, as this process knows it (a node's own, in a deployment)
        entry["root"] = root
    line = json.dumps(entry)
    with _lock:
        _state["sink"].write(line + "\n")
        _state["sink"].flush()


def _hook(event: str, args: tuple) -> None:
    if _state["sink"] is None or (event != "open" and event not in _EVENTS):
        return
    busy = _state["busy"]
    if getattr(busy, "on", False):
        return
    try:
        busy.on = True
        if event == "open":
            _write(args[0], args[1] if len(args) > 1 and isinstance(args[1], str) else "r")
        elif args:
            _write(args[0] if args[0] is not None else ".", _EVENTS[event])
    finally:
        busy.on = False


def record(path: str | Path, mode: str) -> None:
    """Write down an access that raises no audit event (a file opened from C code), or one outside
    the data folders that the record should show (a preview of real images written elsewhere)."""
    if _state["sink"] is None:
        return
    busy = _state["busy"]
    busy.on = True
    try:
        _write(path, mode, anywhere=True)
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
        # noqa: SIM115 - kept open while tracing
        _state["sink"] = open(trace_file, "a", encoding="utf-8")
    finally:
        _state["busy"].on = False
    _state["file"] = str(trace_file)
    _state["role"] = role
    _state["roots"] = tuple(os.path.realpath(str(r)) for r in roots)


@contextmanager
def traced_as(trace_file: str | Path | None, role: str, roots: list[str | Path]) -> Iterator[None]:
    """Record this process's accesses as ``role`` into ``trace_file`` while the block runs (a
    site or the learner served in the driver's own process), then as before."""
    before = (_state["file"], _state["role"], _state["roots"]) if _state["sink"] else None
    if trace_file:
        start_trace(trace_file, role, roots)
    else:
        stop_trace()
    try:
        yield
    finally:
        if before is not None:
            start_trace(*before)
        else:
            stop_trace()


def stop_trace() -> None:
    """Stop recording in this process (the hook stays installed but idle)."""
    sink = _state["sink"]
    _state["sink"] = None
    _state["file"] = ""
    if sink is not None:
        sink.close()


def read_trace(folder: Path) -> list[dict]:
    """All trace lines of a run's ``file_access`` folder, each with the trace file it came from."""
    out = []
    for f in sorted(Path(folder).glob("*.jsonl")):
        out += [
            {**json.loads(line), "file": f.name}
            for line in f.read_text().splitlines()
            if line.strip()
        ]
    return out


def trace_files(folder: Path) -> dict[str, int]:
    """Each trace file of a ``file_access`` folder and how many accesses it holds."""
    return {
        f.name: sum(1 for line in f.read_text().splitlines() if line.strip())
        for f in sorted(Path(folder).glob("*.jsonl"))
    }
