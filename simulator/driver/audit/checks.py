"""The structural checks of the privacy audit: what left each site, its guard, who read its data."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from simulator.messages import EGRESS_KINDS

PASS, FAIL, WARN, NA = "pass", "fail", "warn", "not applicable"
Entry = dict[str, Any]


def check(name: str, verdict: str, detail: str, scope: str = "run") -> dict[str, str]:
    return {"check": name, "scope": scope, "verdict": verdict, "detail": detail}


def site_messages(ledger: list[Entry]) -> Iterator[tuple[str, Entry]]:
    """The ledger entries sent by a site, with the sending site's name."""
    for e in ledger:
        if e["src"].startswith("site:"):
            yield e["src"].split(":", 1)[1], e


def exported(ledger: list[Entry]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Messages sent per site, and bytes sent per site and message kind."""
    counts: dict[str, int] = defaultdict(int)
    exported: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for site, e in site_messages(ledger):
        counts[site] += 1
        exported[site][e["kind"]] += e["bytes"]
    return counts, exported


def egress_kind_check(ledger: list[Entry]) -> dict[str, str]:
    """Every message a site sent is of a declared egress kind."""
    bad, n = [], 0
    for site, e in site_messages(ledger):
        n += 1
        if e["kind"] not in EGRESS_KINDS:
            bad.append(f"seq {e['seq']}: {site} sent kind {e['kind']!r}")
    return check(
        "egress kinds",
        FAIL if bad else PASS,
        "; ".join(bad[:10]) or f"all {n} site messages are of kinds {', '.join(EGRESS_KINDS)}",
    )


def exports_check(ledger: list[Entry], exports: str) -> dict[str, str]:
    """What the export mode allows left each site: in prompt-only mode, prompts and scalars
    alone."""
    if exports != "prompt":
        return check(
            "export mode",
            PASS,
            "model mode: sites export their model after a visit, the SMD prompt "
            "and scalar metrics (the returned weights are an open channel, below)",
        )
    bad = []
    for site, e in site_messages(ledger):
        keys = [a["key"] for a in e["arrays"]]
        if (
            e["kind"] not in ("prompt", "metrics")
            or (e["kind"] == "prompt" and keys != ["prompt/tokens"])
            or (e["kind"] == "metrics" and keys)
        ):
            bad.append(f"seq {e['seq']}: {site} sent a {e['kind']} message with arrays {keys}")
    return check(
        "export mode",
        FAIL if bad else PASS,
        "; ".join(bad[:10])
        or "prompt-only mode: the ledger shows nothing but prompts and scalar metrics leaving "
        "any site",
    )


def image_shape_check(ledger: list[Entry], facts: dict[str, dict[str, Any]]) -> dict[str, str]:
    """No array a site sent has a slice of that site's image size."""
    bad = []
    for site, e in site_messages(ledger):
        h, w = int(facts.get(site, {}).get("height", 0)), int(facts.get(site, {}).get("width", 0))
        for a in e["arrays"]:
            if h and len(a["shape"]) >= 2 and tuple(a["shape"][-2:]) in ((h, w), (w, h)):
                bad.append(f"seq {e['seq']}: {site} sent {a['key']} of shape {a['shape']}")
    return check(
        "no image-shaped array left a site",
        FAIL if bad else PASS,
        "; ".join(bad[:10]) or "no array sent by a site has an image-sized slice",
    )


def guard_check(site: str, g: dict[str, Any] | None) -> dict[str, str]:
    """The verdict on one site's egress-guard report."""
    if g is None:
        return check("egress guard", FAIL, "no guard report", scope=site)
    if g["mode"] == "off":
        return check("egress guard", FAIL, "the guard was switched off (privacy.mode=off)", site)
    if g.get("violations", 0):
        action = {"strict": "stopped", "warn": "blocked", "record": "allowed (non-private)"}.get(
            g["mode"], g["mode"]
        )
        rows = [
            f"{name.split('/')[1]} {name.split('/')[2]} x{int(n)}"
            for name, n in sorted(g.items())
            if name.startswith("violations/") and n
        ]
        detail = f"{int(g['violations'])} violation(s) ({action}): " + "; ".join(rows)
        return check("egress guard", FAIL, detail + "; the site's own log names each", site)
    return check(
        "egress guard",
        PASS,
        f"{int(g['checked_messages'])} messages, "
        f"{int(g['checked_arrays'])} arrays, {int(g['checked_bytes'])} bytes checked "
        f"({g['mode']}); no violation",
        site,
    )


DATA_ROOT = "(the data root)"


def data_owner(path: Path, data_root: str | None) -> str:
    """The site whose data a traced path belongs to (the data root itself belongs to no site)."""
    if data_root and path.is_relative_to(data_root):
        parts = path.relative_to(data_root).parts
        return parts[0] if parts else DATA_ROOT  # <data root>/<site>/...
    return path.parent.name  # run folders written before data_root was recorded


def file_access(
    trace: list[Entry], data_root: str | None
) -> tuple[dict[str, str], dict[tuple[str, str], int]]:
    """The check that only each site opened its own data, and opens per (process, site data)."""
    file_rows: dict[tuple[str, str], int] = defaultdict(int)
    bad = []
    data_root = os.path.realpath(data_root) if data_root else None  # traces hold resolved paths
    for t in trace:
        if "event" in t:
            continue  # a launch, link or load (the launches check reads these)
        # the data folder the tracing process watched (a deployed node's own), else the run's
        root = t.get("root", data_root)
        if root and not Path(t["path"]).is_relative_to(root):
            continue  # recorded for the record (a preview written elsewhere), not site data
        owner = data_owner(Path(t["path"]), root)
        if owner == DATA_ROOT and t.get("mode") == "mkdir":
            # creating the empty root above the site folders (a site's first write does) reads
            # nothing
            continue
        file_rows[(t["role"], owner)] += 1
        if owner == DATA_ROOT and t.get("mode") == "list":
            continue  # listing the site folders' names (the driver does, to know the sites)
        if t["role"] != f"site:{owner}":
            what = {
                "list": "listed",
                "remove": "removed",
                "rename": "renamed",
                "mkdir": "created",
                "link": "linked",
            }.get(t.get("mode"), "opened")
            bad.append(
                f"{t['role']} {what} {t['path']} "
                f"({'data of site ' + owner if owner != DATA_ROOT else owner})"
            )
    verdict = check(
        "only each site opened its own data",
        FAIL if bad else PASS,
        "; ".join(sorted(set(bad))[:10])
        or f"{len(trace)} opens of site data, all by the owning site's process",
    )
    return verdict, file_rows


def process_count(trace: list[Entry], role: str) -> int:
    """How many processes (by pid) wrote trace lines as ``role``."""
    return len({t.get("pid") for t in trace if t["role"] == role})


def trace_coverage(files: dict[str, int], sites: list[str]) -> dict[str, str]:
    """Every process that held or could reach site data left a trace; every site's shows access."""
    missing = [
        f
        for f in ("driver.jsonl", "learner.jsonl", *(f"site-{s}.jsonl" for s in sites))
        if f not in files
    ]
    empty = [s for s in sites if files.get(f"site-{s}.jsonl") == 0]
    problems = [f"no trace {f}" for f in missing] + [
        f"site {s}'s trace is empty although the site holds data" for s in empty
    ]
    return check(
        "every data-reading process was traced",
        FAIL if problems else PASS,
        "; ".join(problems)
        or f"{len(files)} trace files (driver, learner, {len(sites)} sites); "
        f"every site's shows its data being read",
    )
