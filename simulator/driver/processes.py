"""The processes of a run: whether one recorded by id (a run's driver, a lock's holder, a
deployment's node) still lives, and the record of which process serves which role
(``runtime.json``, ``actors.json``) that the audit binds trace lines to."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from simulator.driver.runfolder import RunFolder, write_json
from simulator.filetrace import process_start


def pid_alive(pid: int) -> bool:
    """True while a process with this id exists (also one of another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def record_processes(folder: RunFolder, eng: Any) -> None:
    """``runtime.json`` (this driver: host, pid, Ray, dashboard) and ``actors.json`` (the node and
    process of every actor, one entry per start of the driver; the audit lists them)."""
    import socket

    from simulator.provenance import provenance

    path = folder.file("runtime.json")
    before = json.loads(path.read_text()) if path.exists() else {}
    drivers = before.get("drivers", [])
    here = {"pid": os.getpid(), "start": process_start()}
    write_json(
        path,
        {
            "host": socket.gethostname(),
            **here,
            "started": time.time(),
            **eng.backend.describe(),
            "dashboard": eng.dashboard_url,
            #: every start of the driver (a resumed run's earlier drivers wrote trace lines too)
            "drivers": [*drivers, here],
        },
    )
    prov = folder.file("provenance.json")
    sessions = json.loads(prov.read_text())["sessions"] if prov.exists() else []
    write_json(prov, {"sessions": [*sessions, provenance(eng.cfg.runtime.device)]})
    _record_placement(folder, eng)
    eng.calls.on_restart = lambda site: _record_placement(folder, eng, restarted=site)


def _with_start(placement: dict[str, dict], local_ip: str) -> dict[str, dict]:
    """Each process's start time where this machine can see it (a pid and its start time identify
    a process; the audit binds each trace line's process to its role with them)."""
    import psutil

    out = {}
    for name, where in placement.items():
        where = dict(where)
        pid = where.get("pid")
        if pid is not None and where.get("node_ip", "") in ("", local_ip):
            try:
                where["start"] = round(psutil.Process(int(pid)).create_time(), 3)
            except (psutil.Error, ValueError):
                pass
        out[name] = where
    return out


def _record_placement(folder: RunFolder, eng: Any, restarted: str = "") -> None:
    """Append the processes of every actor to ``actors.json`` (at each start of the driver, and
    after a site's process was restarted)."""
    path = folder.file("actors.json")
    sessions = json.loads(path.read_text())["sessions"] if path.exists() else []
    actors = _with_start(eng.placement(), eng.backend.local_node_ip())
    entry = {"started": time.time(), "actors": actors}
    if restarted:
        entry["restarted"] = restarted
    write_json(path, {"sessions": [*sessions, entry]})
