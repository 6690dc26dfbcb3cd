"""The audit's checks of the trace itself: each line bound to the process recorded for its role,
each site's trace whole (against the count and digest the site reported), the run's data root,
what sites wrote, and the launches, links and foreign-code loads of sites and the learner.

Limits (named in every audit): reads by C code inside a process (an OpenCV or libc read of a
path) and reads by a child process raise no Python audit event; the trace cannot see them. The
launches and foreign-code loads that could make them are recorded and fail the audit, and the
project's readers read site files only through Python opens (decoding bytes).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from simulator.driver.audit.checks import FAIL, PASS, Entry, check
from simulator.driver.audit.files import RunFiles
from simulator.filetrace import digest_lines, is_write

LIMITS = (
    "reads by C code inside a process (for example an OpenCV or libc read of a path) and reads "
    "by a child process raise no Python audit event, so the trace cannot show them; the launches "
    "and foreign-code loads that could make them are recorded in sites and the learner and fail "
    "the audit, and the project's readers read site files only through Python opens",
    "the trace shows what processes did through Python; the operator who runs the driver writes "
    "the run folder, so the audit finds inconsistency, not a consistent forgery",
)

#: what the libraries the project uses launch or load inside sites and the learner, by the event
#: and a pattern of what it names (anything else is a finding): ``platform.architecture()``
#: runs ``file -b`` on the Python executable (Flower's telemetry calls it in a node's ClientApp
#: process); torch.distributed's elastic launcher, imported with Opacus (the DP accountant),
#: opens the C library every process already has (``ctypes.CDLL("libc.so.6")``)
ALLOWED_EVENTS: tuple[tuple[str, str], ...] = (
    ("subprocess.Popen", r"^file -b \S*python[\d.]*$"),
    ("ctypes.dlopen", r"^libc\.so\.6$"),
)

#: what a site may write outside its own data folder: its SMD cache's backbone files, torch's
#: compile cache in the temporary folder, and the null device
ALLOWED_WRITES = (
    re.compile(r"/smd/[0-9a-f]{16}(/[^/]+)?$"),
    re.compile(r"/torchinductor_[^/]+(/.*)?$"),
    re.compile(r"^/dev/null$"),
)
#: the file ``tempfile`` writes and removes at once to find a writable temporary folder
TEMP_PROBE = re.compile(r"/[a-z0-9_]{8}$")


def _file_role(name: str) -> str:
    """The role a trace file is written for (``site-alpha.jsonl`` -> ``site:alpha``)."""
    stem = name.removesuffix(".jsonl")
    return f"site:{stem[len('site-') :]}" if stem.startswith("site-") else stem


def recorded_processes(f: RunFiles) -> dict[str, set[tuple[int, float | None]]]:
    """Per role, the processes (pid, start) the engine recorded serving it."""
    out: dict[str, set[tuple[int, float | None]]] = defaultdict(set)
    for d in [f.runtime, *f.runtime.get("drivers", [])]:
        if d.get("pid") is not None:
            out["driver"].add((int(d["pid"]), d.get("start")))
    for sess in f.actors.get("sessions", []):
        for name, where in sess["actors"].items():
            if where.get("pid") is None:
                continue
            role = f"site:{name[len('site-') :]}" if name.startswith("site-") else name
            out[role].add((int(where["pid"]), where.get("start")))
    return out


def _bound(line: Entry, known: set[tuple[int, float | None]]) -> bool:
    """Whether the line's process, or the process it works for (a Flower node's ClientApp
    process), is one recorded for its role."""
    for key_pid, key_start in (("pid", "start"), ("owner_pid", "owner_start")):
        for pid, start in known:
            if line.get(key_pid) == pid:
                got = line.get(key_start)
                if start is None or got is None or abs(got - start) < 1e-2:
                    return True
    return False


def binds_processes(runtime: dict[str, Any]) -> bool:
    """Whether the engine (``runtime.json``) serves each role in processes of its own (Flower's
    simulation pools its workers, so a site's lines may come from any of them)."""
    return runtime.get("flower_mode") != "simulation"


def trace_roles_check(f: RunFiles) -> dict[str, str]:
    """Every trace line is of its file's role, and (where the engine binds roles to processes)
    written by a process recorded for that role."""
    known = recorded_processes(f)
    bad = []
    for t in f.trace:
        role = _file_role(t.get("file", ""))
        if t.get("role") != role:
            bad.append(f"{t.get('file')}: a line of role {t.get('role')!r}")
        elif binds_processes(f.runtime) and known and not _bound(t, known.get(role, set())):
            bad.append(f"{t.get('file')}: a line of process {t.get('pid')} not recorded as {role}")
    how = (
        "each written by a process recorded for its role"
        if binds_processes(f.runtime)
        else "Flower's simulation pools its workers: processes are not bound to roles"
    )
    return check(
        "trace lines bound to their roles",
        FAIL if bad else PASS,
        "; ".join(sorted(set(bad))[:10]) or f"{len(f.trace)} trace lines, {how}",
    )


def trace_integrity_check(f: RunFiles) -> dict[str, str]:
    """Each site's trace holds, first, the lines the site counted and digested in its report."""
    bad, n = [], 0
    for site in f.sites:
        g = f.guard.get(site) or {}
        if "trace_lines" not in g:
            continue
        path = f.trace_paths.get(f"site-{site}.jsonl")
        if path is None:
            continue  # the coverage check names a missing trace
        n += 1
        lines, digest = digest_lines(path, int(g["trace_lines"]))
        if lines < int(g["trace_lines"]) or digest != int(g["trace_digest"]):
            bad.append(f"site {site}'s trace is not the one it reported ({lines} lines)")
    return check(
        "site traces whole",
        FAIL if bad else PASS,
        "; ".join(bad) or f"{n} site traces match the counts and digests their sites reported",
    )


def trace_root_check(f: RunFiles) -> dict[str, str]:
    """Lines of the run's own traces name the run's data root (a node's traces keep theirs)."""
    data_root = f.sites_info.get("data_root")
    root = os.path.realpath(data_root) if data_root else None
    own = {p.name for p in f.trace_paths.values() if p.parent == f.run_dir / "file_access"}
    by_file: dict[str, set[str]] = defaultdict(set)
    for t in f.trace:
        if "root" in t:
            by_file[t.get("file", "")].add(t["root"])
    bad = [
        f"{name} names {sorted(roots)}"
        for name, roots in sorted(by_file.items())
        if (root and name in own and roots != {root}) or len(roots) > 1
    ]
    return check(
        "trace lines name the data root",
        FAIL if bad else PASS,
        "; ".join(bad[:10]) or "every line names the data root its process watched",
    )


def site_writes_check(f: RunFiles) -> dict[str, str]:
    """A site writes only inside its own data folder (and its SMD cache's backbone files)."""
    bad, n = [], 0
    writes = [
        t
        for t in f.trace
        if str(t.get("role", "")).startswith("site:")
        and "event" not in t
        and is_write(str(t.get("mode", "")))
    ]
    removed = {(t["pid"], t["path"]) for t in writes if t.get("mode") == "remove"}
    cache_writes = [t["path"] for t in writes if any(p.search(t["path"]) for p in ALLOWED_WRITES)]
    data_root = f.sites_info.get("data_root")
    for t in writes:
        n += 1
        role = str(t["role"])
        site = role.split(":", 1)[1]
        path = Path(t["path"])
        root = t.get("root") or (os.path.realpath(data_root) if data_root else None)
        if root and path.is_relative_to(Path(root) / site):
            continue
        if root and t.get("mode") == "mkdir" and (Path(root) / site).is_relative_to(path):
            continue  # the folders above its own, made on its first write
        if any(p.search(t["path"]) for p in ALLOWED_WRITES):
            continue
        if t.get("mode") == "mkdir" and any(c.startswith(t["path"] + "/") for c in cache_writes):
            continue  # the folders above an SMD cache entry it then wrote
        if TEMP_PROBE.search(t["path"]) and (t["pid"], t["path"]) in removed:
            continue  # written and removed by the same process: tempfile's probe
        bad.append(f"{role} wrote {t['path']} ({t.get('mode')})")
    return check(
        "sites wrote only inside their own folders",
        FAIL if bad else PASS,
        "; ".join(sorted(set(bad))[:10]) or f"{n} writes by sites, each inside its own folder",
    )


def launches_check(f: RunFiles) -> dict[str, str]:
    """No site and no learner launched a process, linked a file or loaded foreign code beyond
    what the project's libraries do."""
    found = []
    for t in f.trace:
        if "event" not in t:
            continue
        what = str(t.get("what", ""))
        if any(t["event"] == e and re.search(p, what) for e, p in ALLOWED_EVENTS):
            continue
        found.append(f"{t.get('role')} {t['event']} {what[:80]}")
    return check(
        "no launches, links or foreign code in sites and the learner",
        FAIL if found else PASS,
        "; ".join(sorted(set(found))[:10]) or "none recorded",
    )


def process_checks(f: RunFiles) -> list[dict[str, str]]:
    return [
        trace_roles_check(f),
        trace_integrity_check(f),
        trace_root_check(f),
        site_writes_check(f),
        launches_check(f),
    ]


def verdict_text(passed: bool, isolation: dict[str, Any], runtime: dict[str, Any]) -> str:
    """The overall verdict with what it rests on, never a bare PASS."""
    if not passed:
        return "FAIL"
    engine = runtime.get("engine", "")
    if isolation.get("verdict") == "met" and engine == "ray":
        return "PASS (separate processes; Ray built-ins out of scope)"
    if isolation.get("verdict") == "met" and engine == "flower" and binds_processes(runtime):
        return "PASS (separate processes)"
    return "PASS without isolation"
