"""The privacy audit of a run folder: structural, empirical and formal claims kept apart.

* structural: nothing raw crossed. Read from the message ledger (kinds, shapes of
  everything a site sent), the sites' egress-guard reports (every violation), and
  the file-access trace (which process opened which site's data).
* empirical: measured leakage of the replay (memorisation statistics computed
  inside each site), when the run used generative replay.
* formal: differential privacy. No method here trains with DP, so the report says
  there is no formal guarantee.

``build_audit(run_dir)`` writes ``privacy_audit.json``, ``.md`` and ``.html`` and
returns the audit; ``smg-sim audit RUN_DIR`` calls it and exits non-zero on failure.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from simulator.filetrace import read_trace
from simulator.ledger import read_ledger
from simulator.messages import EGRESS_KINDS
from simulator.runfolder import write_json

PASS, FAIL, WARN, NA = "pass", "fail", "warn", "not applicable"


def _check(name: str, verdict: str, detail: str, scope: str = "run") -> dict[str, str]:
    return {"check": name, "scope": scope, "verdict": verdict, "detail": detail}


def _memorisation_verdict(m: dict[str, float]) -> tuple[str, str]:
    copies = m.get("nn_fraction_under_threshold", 0.0)
    ratio = m.get("nn_ratio_flagged_fraction", 0.0)
    auc_low = m.get("mia_auc_low", 0.5)
    notes = [f"{100 * copies:.1f}% of synthetic images within {m.get('nn_threshold', 0):.3f} RMS of a real one",
             f"{100 * ratio:.1f}% flagged by the ratio test",
             f"membership AUC {m.get('mia_auc', float('nan')):.3f} "
             f"[{m.get('mia_auc_low', float('nan')):.3f}, {m.get('mia_auc_high', float('nan')):.3f}]"]
    bad = copies > 0 or ratio > 0.05 or auc_low > 0.6
    return (WARN if bad else PASS), "; ".join(notes)


def build_audit(run_dir: Path, write: bool = True) -> dict[str, Any]:
    """Audit a run folder from its own files; nothing is recomputed from private data."""
    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    sites_info = json.loads((run_dir / "sites.json").read_text())
    guard = json.loads((run_dir / "guard.json").read_text()) if (run_dir / "guard.json").exists() else {}
    smd = json.loads((run_dir / "smd.json").read_text()) if (run_dir / "smd.json").exists() else {}
    ledger = read_ledger(run_dir / "ledger.jsonl")
    trace = read_trace(run_dir / "file_access") if (run_dir / "file_access").exists() else []
    sites = sites_info["order"]
    facts = sites_info.get("facts", {})
    checks: list[dict[str, str]] = []
    private = not guard or all(g.get("mode") != "record" for g in guard.values())

    # -- structural: the ledger ------------------------------------------------------------
    exported: dict[str, dict[str, int]] = {s: defaultdict(int) for s in sites}
    counts: dict[str, int] = defaultdict(int)
    bad_kind, bad_shape = [], []
    for e in ledger:
        src = e["src"]
        if not src.startswith("site:"):
            continue
        site = src.split(":", 1)[1]
        counts[site] += 1
        exported.setdefault(site, defaultdict(int))[e["kind"]] += e["bytes"]
        if e["kind"] not in EGRESS_KINDS:
            bad_kind.append(f"seq {e['seq']}: {site} sent kind {e['kind']!r}")
        h, w = int(facts.get(site, {}).get("height", 0)), int(facts.get(site, {}).get("width", 0))
        for a in e["arrays"]:
            if h and len(a["shape"]) >= 2 and tuple(a["shape"][-2:]) in ((h, w), (w, h)):
                bad_shape.append(f"seq {e['seq']}: {site} sent {a['key']} of shape {a['shape']}")
    checks.append(_check("egress kinds", FAIL if bad_kind else PASS,
                         "; ".join(bad_kind[:10]) or f"all {sum(counts.values())} site messages are "
                         f"of kinds {', '.join(EGRESS_KINDS)}"))
    checks.append(_check("no image-shaped array left a site", FAIL if bad_shape else PASS,
                         "; ".join(bad_shape[:10]) or "no array sent by a site has an image-sized slice"))
    # -- structural: the guards ------------------------------------------------------------
    for site in sites:
        g = guard.get(site)
        if g is None:
            checks.append(_check("egress guard", FAIL, "no guard report", scope=site))
            continue
        viol = g.get("violation_list", [])
        if g["mode"] == "off":
            checks.append(_check("egress guard", FAIL, "the guard was switched off (privacy.mode=off)", site))
        elif viol:
            lines = [f"{v['kind']} {v['key']}: {v['rule']}: {v['detail']} ({v['action']})" for v in viol]
            checks.append(_check("egress guard", FAIL, f"{len(viol)} violation(s): " + "; ".join(lines[:20]), site))
        else:
            checks.append(_check("egress guard", PASS, f"{int(g['checked_messages'])} messages, "
                                 f"{int(g['checked_arrays'])} arrays, {int(g['checked_bytes'])} bytes checked "
                                 f"({g['mode']}); no violation", site))
    # -- structural: file access -----------------------------------------------------------
    file_rows: dict[tuple[str, str], int] = defaultdict(int)
    bad_files = []
    data_root = sites_info.get("data_root")
    for t in trace:
        path = Path(t["path"])
        if data_root and path.is_relative_to(data_root) and len(path.relative_to(data_root).parts) > 1:
            owner = path.relative_to(data_root).parts[0]  # <data root>/<site>/...
        else:
            owner = path.parent.name  # run folders written before data_root was recorded
        file_rows[(t["role"], owner)] += 1
        if t["role"] != f"site:{owner}":
            bad_files.append(f"{t['role']} opened {t['path']}")
    checks.append(_check("only each site opened its own data", FAIL if bad_files else PASS,
                         "; ".join(sorted(set(bad_files))[:10]) or
                         f"{len(trace)} opens of site data, all by the owning site's process"))
    # -- empirical -------------------------------------------------------------------------
    empirical = []
    for site, info in smd.get("sites", {}).items():
        if "mia_auc" in info:
            verdict, detail = _memorisation_verdict(info)
            empirical.append(_check("replay memorisation", verdict, detail, scope=site))
    structural_ok = all(c["verdict"] == PASS for c in checks)
    audit = {
        "run": str(run_dir),
        "method": cfg["run"]["method"],
        "privacy_mode": cfg.get("privacy", {}).get("mode", "strict"),
        "private_method": private,
        "verdict": PASS if structural_ok else FAIL,
        "claims": {
            "structural": {"verdict": PASS if structural_ok else FAIL,
                           "claim": "no real image or mask left the site that holds it", "checks": checks},
            "empirical": {"verdict": (WARN if any(c["verdict"] == WARN for c in empirical) else PASS)
                          if empirical else NA,
                          "claim": "the synthetic replay does not reproduce or reveal training images",
                          "checks": empirical},
            "formal": {"verdict": "none",
                       "claim": "no differentially private training is used; there is no formal "
                                "(epsilon, delta) guarantee"},
        },
        "sites": {s: {"messages": counts.get(s, 0), "exported_bytes": dict(exported.get(s, {})),
                      "data_bytes": int(facts.get(s, {}).get("data_bytes", 0)),
                      "memorisation": {k: v for k, v in smd.get("sites", {}).get(s, {}).items()
                                       if k.startswith(("nn_", "real_nn", "mia_"))}}
                  for s in sites},
        "file_access": [{"role": r, "site_data": o, "opens": n} for (r, o), n in sorted(file_rows.items())],
        "ledger": {"messages": len(ledger), "bytes": sum(e["bytes"] for e in ledger)},
    }
    if write:
        write_json(run_dir / "privacy_audit.json", audit)
        md = audit_markdown(audit)
        (run_dir / "privacy_audit.md").write_text(md)
        (run_dir / "privacy_audit.html").write_text(_html(audit, md))
    return audit


def audit_markdown(a: dict[str, Any]) -> str:
    """A readable report of one audit."""
    out = [f"# Privacy audit: {a['verdict'].upper()}", "",
           f"Run `{a['run']}`, method `{a['method']}`, guard mode `{a['privacy_mode']}`"
           + ("" if a["private_method"] else " (NON-PRIVATE reference method: real data leaves sites by design)"),
           ""]
    for name in ("structural", "empirical", "formal"):
        c = a["claims"][name]
        out += [f"## {name.capitalize()}: {c['verdict']}", "", c["claim"] + ".", ""]
        if c.get("checks"):
            out += ["| check | scope | verdict | detail |", "|---|---|---|---|"]
            out += [f"| {k['check']} | {k['scope']} | {k['verdict']} | {k['detail']} |" for k in c["checks"]]
            out.append("")
    out += ["## Bytes exported per site", "", "| site | messages | prompt | model | metrics | site data |",
            "|---|---|---|---|---|---|"]
    for s, info in a["sites"].items():
        e = info["exported_bytes"]
        out.append(f"| {s} | {info['messages']} | {e.get('prompt', 0)} | {e.get('model', 0)} | "
                   f"{e.get('metrics', 0)} | {info['data_bytes']} |")
    out += ["", "## File access to site data", "", "| process | site data opened | opens |", "|---|---|---|"]
    out += [f"| {r['role']} | {r['site_data']} | {r['opens']} |" for r in a["file_access"]] or ["| (none) | | |"]
    mem = {s: i["memorisation"] for s, i in a["sites"].items() if i["memorisation"]}
    if mem:
        keys = ["nn_distance_min", "nn_distance_median", "real_nn_distance_min", "nn_fraction_under_threshold",
                "nn_ratio_flagged_fraction", "mia_auc", "mia_auc_low", "mia_auc_high"]
        out += ["", "## Memorisation of the replay (computed inside each site)", "",
                "| site | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        out += [f"| {s} | " + " | ".join(f"{m.get(k, float('nan')):.3f}" for k in keys) + " |"
                for s, m in mem.items()]
    out += ["", f"Ledger: {a['ledger']['messages']} messages, {a['ledger']['bytes']} array bytes.", ""]
    return "\n".join(out)


def _html(a: dict[str, Any], md: str) -> str:
    color = {"pass": "#1a7f37", "fail": "#cf222e"}.get(a["verdict"], "#9a6700")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Privacy audit</title></head>"
            f"<body style='font-family:sans-serif;max-width:1100px'>"
            f"<h1 style='color:{color}'>Privacy audit: {a['verdict'].upper()}</h1>"
            f"<pre style='white-space:pre-wrap'>{html.escape(md)}</pre></body></html>")
