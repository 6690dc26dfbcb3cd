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
    "start": None,
    #: the process a short-lived worker works for (a Flower SuperNode's ClientApp process works
    #: for its node): (pid, start), written on each line
    "owner": None,
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


#: launches, links and foreign-code loads, recorded wherever they point (in the sites and the
#: learner; the driver starts Ray and Flower's processes itself), and the argument that names
#: what was launched, linked or loaded
_PROCESS_EVENTS = {
    "subprocess.Popen": 1,
    "os.system": 0,
    "os.exec": 0,
    "os.posix_spawn": 0,
    "os.spawn": 1,
    "os.fork": None,
    "os.forkpty": None,
    "os.link": 0,
    "os.symlink": 0,
    "ctypes.dlopen": 0,
    "ctypes.dlsym": 1,
}
#: modes of ``open`` that write
_WRITES = set("wax+")
#: events that change the file system
_CHANGES = {"remove", "rename", "mkdir", "link"}


def process_start() -> float:
    """This process's start time as the OS keeps it (with its pid, the process's identity)."""
    if _state["start"] is None or _state.get("start_pid") != os.getpid():
        import psutil

        _state["start"] = round(psutil.Process().create_time(), 3)
        _state["start_pid"] = os.getpid()
    return _state["start"]


def set_owner(pid: int) -> None:
    """Lines of this process name ``pid`` as the process it works for (its role's recorded
    process: a Flower SuperNode whose ClientApp runs in a process of its own per message)."""
    if pid == os.getpid():
        _state["owner"] = None
        return
    import psutil

    try:
        _state["owner"] = (pid, round(psutil.Process(pid).create_time(), 3))
    except psutil.Error:
        _state["owner"] = None


def _stamp(entry: dict) -> dict:
    if _state["owner"] is not None:
        entry["owner_pid"], entry["owner_start"] = _state["owner"]
    return entry


def is_write(mode: str) -> bool:
    """Whether a traced mode or event changes the file system (a write, creation, removal,
    rename or link)."""
    return mode in _CHANGES or bool(_WRITES & set(mode))


def _write(path: object, mode: str, anywhere: bool = False) -> None:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return
    p = os.path.realpath(os.fsdecode(path))
    root = next((r for r in _state["roots"] if p == r or p.startswith(r + os.sep)), None)
    # outside the data folders: what a site writes anywhere is recorded (its writes are checked)
    site_write = str(_state["role"]).startswith("site:") and is_write(mode)
    if root is None and not (anywhere or site_write):
        return
    entry = {
        "time": time.time(),
        "role": _state["role"],
        "pid": os.getpid(),
        "start": process_start(),
        "path": p,
        "mode": mode,
    }
    if (
        root is not None
    ):  # the data folder it lies in, as this process knows it (a node's own, in a deployment)
        entry["root"] = root
    line = json.dumps(_stamp(entry))
    with _lock:
        _state["sink"].write(line + "\n")
        _state["sink"].flush()


def _hook(event: str, args: tuple) -> None:
    if _state["sink"] is None or (
        event != "open" and event not in _EVENTS and event not in _PROCESS_EVENTS
    ):
        return
    busy = _state["busy"]
    if getattr(busy, "on", False):
        return
    try:
        busy.on = True
        if event == "open":
            _write(args[0], _open_mode(args))
        elif event in _PROCESS_EVENTS:
            _process_event(event, args)
        elif args:
            _write(args[0] if args[0] is not None else ".", _EVENTS[event])
    finally:
        busy.on = False


def _open_mode(args: tuple) -> str:
    """The mode of an ``open`` event: ``open()``'s string, or from ``os.open``'s flags."""
    if len(args) > 1 and isinstance(args[1], str):
        return args[1]
    flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    return "w" if flags & writing else "r"


def _process_event(event: str, args: tuple) -> None:
    """A launch, link or foreign-code load by a site or the learner: recorded as the event with
    what it names (a link's source is also checked as an access of the data it points to)."""
    role = str(_state["role"])
    if event in ("os.link", "os.symlink") and args:
        _write(args[0], "link")
    if not (role.startswith("site:") or role == "learner"):
        return
    i = _PROCESS_EVENTS[event]
    what = args[i] if i is not None and len(args) > i else ""
    if isinstance(what, (list, tuple)):
        what = " ".join(os.fsdecode(a) if isinstance(a, (str, bytes)) else str(a) for a in what)
    elif isinstance(what, (bytes, os.PathLike)):
        what = os.fsdecode(what)
    entry = {
        "time": time.time(),
        "role": role,
        "pid": os.getpid(),
        "start": process_start(),
        "event": event,
        "what": str(what)[:300] if what is not None else "",
    }
    with _lock:
        _state["sink"].write(json.dumps(_stamp(entry)) + "\n")
        _state["sink"].flush()


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


def digest_lines(path: str | Path, n: int | None = None) -> tuple[int, int]:
    """A trace file's number of lines and a 48-bit digest of them (SHA-256 of the lines: what a
    site reports of its own trace in its final message); ``n``: only its first ``n`` lines (the
    lines a site had reported, for the audit). A missing file has no lines."""
    import hashlib

    h = hashlib.sha256()
    got = 0
    p = Path(path)
    if p.exists():
        with p.open("rb") as fh:
            for line in fh:
                if n is not None and got >= n:
                    break
                if line.strip():
                    h.update(line.rstrip(b"\n") + b"\n")
                    got += 1
    return got, int(h.hexdigest()[:12], 16)


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
