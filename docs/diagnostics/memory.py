"""Memory of one `smg-sim run`: per-actor PSS and RSS, and the peak over the whole run.

Starts the run given after ``--`` and samples, every ``--every`` seconds, the proportional set
size (PSS) and resident set size (RSS) of every process of it, read from
``/proc/PID/smaps_rollup``: the driver, Ray's own processes and every actor (a site actor's
process title is ``ray::Site...``, the learner's ``ray::Learner...``). Prints and writes (JSON)
the peak of the summed PSS, the peak summed RSS, the machine's peak used memory (MemTotal minus
MemAvailable, less what was used before the start), per-actor peaks (median and max over the
site actors) and the wall time. Usage::

    .venv/bin/python docs/diagnostics/memory.py --out docs/diagnostics/memory-48.json -- \\
        .venv/bin/smg-sim run --profile smoke --sites 48 --method finetune --quiet --no-dashboard
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _rollup(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in kB, or (0, 0) for a process that is gone."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def _title(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode(errors="replace")
            .strip()
        )
    except OSError:
        return ""


def _used_kb() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])


def _children(root: int) -> set[int]:
    """``root`` and every process below it, plus Ray's processes (raylet, GCS, workers)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in out and pid not in out:
                out.add(pid)
                grew = True
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--out", default="")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    base = _used_kb()
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    peak = {"pss_kb": 0, "rss_kb": 0, "used_kb": 0}
    actors: dict[str, dict[str, int]] = {}
    while proc.poll() is None:
        total_pss = total_rss = 0
        for pid in _children(proc.pid):
            pss, rss = _rollup(pid)
            total_pss += pss
            total_rss += rss
            title = _title(pid)
            if title.startswith("ray::") and ("Site" in title or "Learner" in title):
                key = f"{'site' if 'Site' in title else 'learner'}:{pid}"
                row = actors.setdefault(key, {"pss_kb": 0, "rss_kb": 0})
                row["pss_kb"], row["rss_kb"] = max(row["pss_kb"], pss), max(row["rss_kb"], rss)
        peak["pss_kb"] = max(peak["pss_kb"], total_pss)
        peak["rss_kb"] = max(peak["rss_kb"], total_rss)
        peak["used_kb"] = max(peak["used_kb"], _used_kb() - base)
        time.sleep(a.every)
    sites = [v for k, v in actors.items() if k.startswith("site:")]
    result = {
        "command": cmd,
        "returncode": proc.returncode,
        "wall_seconds": time.time() - t0,
        "peak_total_pss_mb": peak["pss_kb"] / 1024,
        "peak_total_rss_mb": peak["rss_kb"] / 1024,
        "peak_machine_used_mb": peak["used_kb"] / 1024,
        "site_actors": len(sites),
        "site_pss_mb": {
            "median": statistics.median(v["pss_kb"] for v in sites) / 1024,
            "max": max(v["pss_kb"] for v in sites) / 1024,
        }
        if sites
        else None,
        "site_rss_mb": {
            "median": statistics.median(v["rss_kb"] for v in sites) / 1024,
            "max": max(v["rss_kb"] for v in sites) / 1024,
        }
        if sites
        else None,
        "learner_pss_mb": [
            v["pss_kb"] / 1024 for k, v in actors.items() if k.startswith("learner:")
        ],
    }
    print(json.dumps(result, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
