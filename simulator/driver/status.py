"""``smg-sim status``: the state of every run under a folder, read from the run folders alone.

A run is ``complete`` (COMPLETE), ``running`` (its driver process, recorded in runtime.json, is
alive on this host), ``resumable`` (stopped with a checkpoint), ``failed`` (stopped before its
first checkpoint) or ``starting`` (nothing written yet). For a running run whose dashboard is on,
its live actors come from the dashboard's state API over HTTP; otherwise from the run folder.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from simulator.driver.processes import pid_alive
from simulator.driver.runfolder import FAILED, MARKER


@dataclass
class RunStatus:
    """One run folder's state and progress."""

    path: Path
    state: str
    method: str = "?"
    stage: int = -1
    stages: int = 0
    mem: float | None = None
    gen: float | None = None
    eta_seconds: float | None = None
    why: str = ""
    actors: list[str] = field(default_factory=list)


def _state(run: Path) -> tuple[str, str]:
    if (run / MARKER).exists():
        return "complete", ""
    rt = run / "runtime.json"
    if rt.exists():
        info = json.loads(rt.read_text())
        if info.get("host") == socket.gethostname() and pid_alive(int(info.get("pid", 0))):
            return "running", ""
    why = (
        (run / FAILED).read_text().splitlines()[0]
        if (run / FAILED).exists()
        else "its driver is gone"
    )
    if (run / "checkpoint" / "LATEST").exists():
        return "resumable", why
    return (
        ("failed", why)
        if (run / "stages.jsonl").exists() or (run / FAILED).exists()
        else ("starting", "")
    )


def _live_actors(run: Path) -> list[str]:
    """The run's actors from the dashboard's state API (empty when the dashboard is off)."""
    info = json.loads((run / "runtime.json").read_text()) if (run / "runtime.json").exists() else {}
    url = info.get("dashboard")
    if not url:
        return []
    try:
        with urllib.request.urlopen(
            f"{url}/api/v0/actors?limit=10000&detail=false", timeout=3
        ) as r:
            data = json.loads(r.read().decode())
    except (OSError, ValueError):
        return []
    rows = data.get("data", {}).get("result", {}).get("result", [])
    ns = f"smg-sim-{run.name}"
    return sorted(
        f"{a.get('name')} ({a.get('state')}, pid {a.get('pid')})"
        for a in rows
        if a.get("ray_namespace") == ns and a.get("name")
    )


def run_status(run: Path) -> RunStatus:
    """The state, stage, latest Mem and Gen, and ETA of one run folder."""
    state, why = _state(run)
    st = RunStatus(run, state, why=why)
    cfg = run / "config.json"
    if cfg.exists():
        st.method = json.loads(cfg.read_text())["run"]["method"]
    lines = (
        [json.loads(x) for x in (run / "stages.jsonl").read_text().splitlines()]
        if (run / "stages.jsonl").exists()
        else []
    )
    sites = run / "sites.json"
    if sites.exists():
        st.stages = len(json.loads(sites.read_text())["order"])
    if lines:
        last = lines[-1]
        st.stage = int(last["stage"])
        row = list(last["dice"].values())
        if st.stage >= 2:
            st.mem = sum(row[: st.stage - 1]) / (st.stage - 1)
        if 0 < st.stage < len(row):
            st.gen = sum(row[st.stage :]) / (len(row) - st.stage)
        spent = [x["stage_seconds"] for x in lines if "stage_seconds" in x]
        if state == "running" and spent and st.stages:
            st.eta_seconds = sum(spent) / len(spent) * (st.stages - st.stage)
    if state == "running":
        st.actors = _live_actors(run)
    return st


def find_runs(root: Path) -> list[Path]:
    """Every run folder under ``root`` (a run folder itself, or a folder of them, or a
    comparison's)."""
    root = Path(root)
    if (root / "config.json").exists() and (root / "method.json").exists():
        return [root]
    found = {p.parent for p in root.rglob("method.json") if (p.parent / "config.json").exists()}
    return sorted(found, key=lambda p: (p.stat().st_mtime, str(p)))


def format_status(rows: list[RunStatus], now: float | None = None) -> str:
    """The table ``smg-sim status`` prints."""
    del now
    head = (
        f"{'run':44s} {'state':10s} {'method':18s} {'stage':>7s} {'Mem':>6s} {'Gen':>6s} "
        f"{'ETA':>7s}"
    )
    out = [head]
    for r in rows:
        stage = f"{max(r.stage, 0)}/{r.stages}" if r.stages else "-"
        fmt = lambda v: f"{v:6.3f}" if v is not None else f"{'-':>6s}"  # noqa: E731
        eta = (
            f"{int(r.eta_seconds) // 60}:{int(r.eta_seconds) % 60:02d}"
            if r.eta_seconds is not None
            else "-"
        )
        out.append(
            f"{r.path.name[:44]:44s} {r.state:10s} {r.method[:18]:18s} {stage:>7s} {fmt(r.mem)} "
            f"{fmt(r.gen)} {eta:>7s}"
        )
        if r.why and r.state in ("resumable", "failed"):
            out.append(f"    {r.why.splitlines()[0][:110]}")
        out += [f"    actor {a}" for a in r.actors]
    return "\n".join(out)


def status(root: Path) -> str:
    """The status table of every run under ``root``."""
    runs = find_runs(root)
    if not runs:
        return f"no run folders under {root}"
    return format_status([run_status(r) for r in runs], time.time())
