"""The privacy audit of a run folder: structural, empirical and formal claims kept apart.

* structural: nothing raw crossed. Read from the message ledger (kinds, shapes of
  everything a site sent), the sites' egress-guard reports (every violation), and
  the file-access trace (which process opened which site's data).
* empirical: measured leakage of the replay (memorisation statistics computed
  inside each site), when the run used generative replay.
* formal: differential privacy. With ``privacy.dp_epsilon`` set, each site's prompt is
  tuned with DP-SGD and the report gives its (epsilon, delta) per site, read from the
  prompt logs, and what the bound does not cover; without it there is no formal guarantee.

``build_audit(run_dir)`` writes ``privacy_audit.json``, ``.md`` and ``.html`` and
returns the audit; ``smg-sim audit RUN_DIR`` calls it and exits non-zero on failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulator.driver.audit.bits import scalar_budget_checks
from simulator.driver.audit.channels import empirical_checks, open_channels
from simulator.driver.audit.checks import (
    FAIL,
    NA,
    PASS,
    WARN,
    check,
    egress_kind_check,
    exported,
    exports_check,
    file_access,
    guard_check,
    image_shape_check,
    process_count,
    trace_coverage,
)
from simulator.driver.audit.files import RunFiles, read_run_files
from simulator.driver.audit.formal import formal_claim
from simulator.driver.audit.isolation import process_isolation
from simulator.driver.audit.processes import LIMITS, process_checks, verdict_text
from simulator.driver.audit.trust import TRUST_MODEL
from simulator.driver.runfolder import write_json


def _site_summary(
    f: RunFiles, counts: dict[str, int], exported: dict[str, dict[str, int]]
) -> dict[str, Any]:
    """Per site: messages and bytes sent, data held, replay memorisation statistics."""
    return {
        s: {
            "messages": counts.get(s, 0),
            "exported_bytes": dict(exported.get(s, {})),
            "data_bytes": int(f.facts.get(s, {}).get("data_bytes", 0)),
            "memorisation": {
                k: v
                for k, v in f.smd.get("sites", {}).get(s, {}).items()
                if k.startswith(("nn_", "real_nn", "mia_"))
            },
        }
        for s in f.sites
    }


def _claims(
    structural: list[dict[str, str]], empirical: list[dict[str, str]], formal: dict[str, Any]
) -> dict[str, Any]:
    """The three claims with their verdicts, kept apart."""
    structural_ok = all(c["verdict"] == PASS for c in structural)
    return {
        "structural": {
            "verdict": PASS if structural_ok else FAIL,
            "claim": "no real image or mask left the site that holds it",
            "checks": structural,
        },
        "empirical": {
            "verdict": (WARN if any(c["verdict"] == WARN for c in empirical) else PASS)
            if empirical
            else NA,
            "claim": "the synthetic replay does not reproduce or reveal training images",
            "checks": empirical,
        },
        "formal": formal,
    }


def assemble_audit(f: RunFiles, require_isolation: bool = False) -> dict[str, Any]:
    """The audit of the files read from one run folder; ``require_isolation``: sites that shared
    a process fail it (otherwise the verdict says it holds without isolation)."""
    counts, sent = exported(f.ledger)
    file_check, file_rows = file_access(f.trace, f.sites_info.get("data_root"))
    exports = f.config.get("privacy", {}).get("exports", "model")
    budget_checks, bits_table = scalar_budget_checks(f.ledger, f.guard, f.sites)
    structural = [
        egress_kind_check(f.ledger),
        exports_check(f.ledger, exports),
        image_shape_check(f.ledger, f.facts),
        *(guard_check(s, f.guard.get(s)) for s in f.sites),
        file_check,
        trace_coverage(f.trace_files, f.sites),
        *process_checks(f),
        *budget_checks,
    ]
    isolation = process_isolation(f.actors, f.config.get("runtime", {}).get("engine", "ray"))
    if require_isolation:
        met = isolation["verdict"] == "met"
        structural.append(
            check(
                "one process per site (required)",
                PASS if met else FAIL,
                isolation["detail"],
            )
        )
    claims = _claims(structural, empirical_checks(f.smd), formal_claim(f))
    failed = FAIL in (claims["structural"]["verdict"], claims["formal"]["verdict"])
    return {
        "run": str(f.run_dir),
        "trust_model": list(TRUST_MODEL),
        "method": f.config["run"]["method"],
        "privacy_mode": f.config.get("privacy", {}).get("mode", "strict"),
        "exports": exports,
        "private_method": not f.guard or all(g.get("mode") != "record" for g in f.guard.values()),
        "verdict": FAIL if failed else PASS,
        "verdict_text": verdict_text(not failed, isolation, f.runtime),
        "limits": list(LIMITS),
        "claims": claims,
        "sites": _site_summary(f, counts, sent),
        "file_access": [
            {"role": r, "site_data": o, "opens": n, "processes": process_count(f.trace, r)}
            for (r, o), n in sorted(file_rows.items())
        ],
        "ledger": {"messages": len(f.ledger), "bytes": sum(e["bytes"] for e in f.ledger)},
        "open_channels": open_channels(f.ledger, f.config),
        "scalar_bits": bits_table,
        "isolation": isolation,
        "placement": [
            {"session": i, "actor": name, **where}
            for i, sess in enumerate(f.actors.get("sessions", []))
            for name, where in sorted(sess["actors"].items())
        ],
    }


def write_audit(run_dir: Path, audit: dict[str, Any]) -> None:
    """Write the audit as ``privacy_audit.json``, ``.md`` and ``.html`` into the run folder."""
    write_json(run_dir / "privacy_audit.json", audit)
    from simulator.driver.audit.report import audit_html, audit_markdown

    md = audit_markdown(audit)
    (run_dir / "privacy_audit.md").write_text(md)
    (run_dir / "privacy_audit.html").write_text(audit_html(audit, md))


def build_audit(
    run_dir: Path,
    write: bool = True,
    node_traces: list[Path] = (),
    require_isolation: bool = False,
) -> dict[str, Any]:
    """Audit a run folder from its own files (and the traces deployed nodes kept, from
    ``node_traces``); nothing is recomputed from private data."""
    run_dir = Path(run_dir)
    audit = assemble_audit(read_run_files(run_dir, node_traces), require_isolation)
    if write:
        write_audit(run_dir, audit)
    return audit
