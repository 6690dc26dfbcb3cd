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

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator import schemas
from simulator.driver.isolation import process_isolation
from simulator.driver.ledger import read_ledger
from simulator.driver.runfolder import write_json
from simulator.filetrace import read_trace, trace_files
from simulator.messages import EGRESS_KINDS

PASS, FAIL, WARN, NA = "pass", "fail", "warn", "not applicable"


def _check(name: str, verdict: str, detail: str, scope: str = "run") -> dict[str, str]:
    return {"check": name, "scope": scope, "verdict": verdict, "detail": detail}


def _memorisation_verdict(m: dict[str, float]) -> tuple[str, str]:
    copies = m.get("nn_fraction_under_threshold", 0.0)
    ratio = m.get("nn_ratio_flagged_fraction", 0.0)
    auc_low = m.get("mia_auc_low", 0.5)
    notes = [
        f"{100 * copies:.1f}% of synthetic images within {m.get('nn_threshold', 0):.3f} RMS of a real one",
        f"{100 * ratio:.1f}% flagged by the ratio test",
        f"membership AUC {m.get('mia_auc', float('nan')):.3f} "
        f"[{m.get('mia_auc_low', float('nan')):.3f}, {m.get('mia_auc_high', float('nan')):.3f}]",
    ]
    bad = copies > 0 or ratio > 0.05 or auc_low > 0.6
    return (WARN if bad else PASS), "; ".join(notes)


@dataclass(frozen=True)
class RunFiles:
    """What the audit reads from a run folder; nothing else is consulted."""

    run_dir: Path
    config: dict[str, Any]
    sites_info: dict[str, Any]
    guard: dict[str, Any]
    smd: dict[str, Any]
    ledger: list[dict[str, Any]]
    trace: list[dict[str, Any]]
    #: where each actor ran, per start of the run's driver (actors.json; empty for older folders)
    actors: dict[str, Any]
    #: each trace file of the run and how many accesses it holds
    trace_files: dict[str, int]

    @property
    def sites(self) -> list[str]:
        """The sites in the order the run visited them."""
        return self.sites_info["order"]

    @property
    def facts(self) -> dict[str, dict[str, Any]]:
        """Per-site facts (image size, data bytes) recorded when the run started."""
        return self.sites_info.get("facts", {})


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _read_optional_json(path: Path) -> Any:
    """A file a run may lack (no guard report, no SMD): an empty dict then."""
    return _read_json(path) if path.exists() else {}


def read_run_files(run_dir: Path) -> RunFiles:
    """Read the files of a run folder that the audit is built from."""
    run_dir = Path(run_dir)
    trace_dir = run_dir / "file_access"
    return RunFiles(
        run_dir=run_dir,
        config=_read_json(run_dir / "config.json"),
        sites_info=_read_json(run_dir / "sites.json"),
        guard=_read_optional_json(run_dir / "guard.json"),
        smd=_read_optional_json(run_dir / "smd.json"),
        ledger=read_ledger(run_dir / "ledger.jsonl"),
        trace=read_trace(trace_dir) if trace_dir.exists() else [],
        actors=_read_optional_json(run_dir / "actors.json"),
        trace_files=trace_files(trace_dir) if trace_dir.exists() else {},
    )


Entry = dict[str, Any]


def _site_messages(ledger: list[Entry]) -> Iterator[tuple[str, Entry]]:
    """The ledger entries sent by a site, with the sending site's name."""
    for e in ledger:
        if e["src"].startswith("site:"):
            yield e["src"].split(":", 1)[1], e


def _exported(ledger: list[Entry]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Messages sent per site, and bytes sent per site and message kind."""
    counts: dict[str, int] = defaultdict(int)
    exported: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for site, e in _site_messages(ledger):
        counts[site] += 1
        exported[site][e["kind"]] += e["bytes"]
    return counts, exported


def _egress_kind_check(ledger: list[Entry]) -> dict[str, str]:
    """Every message a site sent is of a declared egress kind."""
    bad, n = [], 0
    for site, e in _site_messages(ledger):
        n += 1
        if e["kind"] not in EGRESS_KINDS:
            bad.append(f"seq {e['seq']}: {site} sent kind {e['kind']!r}")
    return _check(
        "egress kinds",
        FAIL if bad else PASS,
        "; ".join(bad[:10]) or f"all {n} site messages are of kinds {', '.join(EGRESS_KINDS)}",
    )


def _exports_check(ledger: list[Entry], exports: str) -> dict[str, str]:
    """What the export mode allows left each site: in prompt-only mode, prompts and scalars alone."""
    if exports != "prompt":
        return _check(
            "export mode",
            PASS,
            "model mode: sites export their model after a visit, the SMD prompt "
            "and scalar metrics (the returned weights are an open channel, below)",
        )
    bad = []
    for site, e in _site_messages(ledger):
        keys = [a["key"] for a in e["arrays"]]
        if (
            e["kind"] not in ("prompt", "metrics")
            or (e["kind"] == "prompt" and keys != ["prompt/tokens"])
            or (e["kind"] == "metrics" and keys)
        ):
            bad.append(f"seq {e['seq']}: {site} sent a {e['kind']} message with arrays {keys}")
    return _check(
        "export mode",
        FAIL if bad else PASS,
        "; ".join(bad[:10])
        or "prompt-only mode: the ledger shows nothing but prompts and scalar metrics leaving any site",
    )


def _image_shape_check(ledger: list[Entry], facts: dict[str, dict[str, Any]]) -> dict[str, str]:
    """No array a site sent has a slice of that site's image size."""
    bad = []
    for site, e in _site_messages(ledger):
        h, w = int(facts.get(site, {}).get("height", 0)), int(facts.get(site, {}).get("width", 0))
        for a in e["arrays"]:
            if h and len(a["shape"]) >= 2 and tuple(a["shape"][-2:]) in ((h, w), (w, h)):
                bad.append(f"seq {e['seq']}: {site} sent {a['key']} of shape {a['shape']}")
    return _check(
        "no image-shaped array left a site",
        FAIL if bad else PASS,
        "; ".join(bad[:10]) or "no array sent by a site has an image-sized slice",
    )


def _guard_check(site: str, g: dict[str, Any] | None) -> dict[str, str]:
    """The verdict on one site's egress-guard report."""
    if g is None:
        return _check("egress guard", FAIL, "no guard report", scope=site)
    viol = g.get("violation_list", [])
    if g["mode"] == "off":
        return _check("egress guard", FAIL, "the guard was switched off (privacy.mode=off)", site)
    if viol:
        lines = [
            f"{v['kind']} {v['key']}: {v['rule']}: {v['detail']} ({v['action']})" for v in viol
        ]
        return _check(
            "egress guard", FAIL, f"{len(viol)} violation(s): " + "; ".join(lines[:20]), site
        )
    return _check(
        "egress guard",
        PASS,
        f"{int(g['checked_messages'])} messages, "
        f"{int(g['checked_arrays'])} arrays, {int(g['checked_bytes'])} bytes checked "
        f"({g['mode']}); no violation",
        site,
    )


DATA_ROOT = "(the data root)"


def _data_owner(path: Path, data_root: str | None) -> str:
    """The site whose data a traced path belongs to (the data root itself belongs to no site)."""
    if data_root and path.is_relative_to(data_root):
        parts = path.relative_to(data_root).parts
        return parts[0] if parts else DATA_ROOT  # <data root>/<site>/...
    return path.parent.name  # run folders written before data_root was recorded


def _file_access(
    trace: list[Entry], data_root: str | None
) -> tuple[dict[str, str], dict[tuple[str, str], int]]:
    """The check that only each site opened its own data, and opens per (process, site data)."""
    file_rows: dict[tuple[str, str], int] = defaultdict(int)
    bad = []
    data_root = os.path.realpath(data_root) if data_root else None  # traces hold resolved paths
    for t in trace:
        # the data folder the tracing process watched (a deployed node's own), else the run's
        root = t.get("root", data_root)
        if root and not Path(t["path"]).is_relative_to(root):
            continue  # recorded for the record (a preview written elsewhere), not site data
        owner = _data_owner(Path(t["path"]), root)
        if owner == DATA_ROOT and t.get("mode") == "mkdir":
            continue  # creating the empty root above the site folders (a site's first write does) reads nothing
        file_rows[(t["role"], owner)] += 1
        if owner == DATA_ROOT and t.get("mode") == "list":
            continue  # listing the site folders' names (the driver does, to know the sites)
        if t["role"] != f"site:{owner}":
            what = {
                "list": "listed",
                "remove": "removed",
                "rename": "renamed",
                "mkdir": "created",
            }.get(t.get("mode"), "opened")
            bad.append(
                f"{t['role']} {what} {t['path']} ({'data of site ' + owner if owner != DATA_ROOT else owner})"
            )
    check = _check(
        "only each site opened its own data",
        FAIL if bad else PASS,
        "; ".join(sorted(set(bad))[:10])
        or f"{len(trace)} opens of site data, all by the owning site's process",
    )
    return check, file_rows


def _process_count(trace: list[Entry], role: str) -> int:
    """How many processes (by pid) wrote trace lines as ``role``."""
    return len({t.get("pid") for t in trace if t["role"] == role})


def _trace_coverage(files: dict[str, int], sites: list[str]) -> dict[str, str]:
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
    return _check(
        "every data-reading process was traced",
        FAIL if problems else PASS,
        "; ".join(problems)
        or f"{len(files)} trace files (driver, learner, {len(sites)} sites); "
        f"every site's shows its data being read",
    )


def _metric_rules(method: str) -> dict[str, Any]:
    """Every metric name a site may send in a run of ``method``, with its declared rule."""
    from server.methods import method_class

    out: dict[str, Any] = {}
    for table in (
        schemas.DESCRIBE,
        schemas.TRAIN,
        schemas.VISIT_START,
        schemas.EVALUATE,
        schemas.PROMPT_LOGS,
        schemas.FIDELITY,
        schemas.SCORES,
        schemas.PING,
        schemas.ARMED,
        schemas.PREVIEW,
        schemas.MODEL,
        schemas.GUARD_COUNTS,
        method_class(method).log_names,
    ):
        out.update(table)
    return out


def open_channels(ledger: list[Entry], method: str) -> list[dict[str, Any]]:
    """What the messages sites sent could carry at most, by channel, in bits for the whole run.

    The schema fixes every message's shape, so what stays open is the values in declared places:
    each value of a declared array at its dtype's width, and each declared metric at the bits its
    range and resolution allow (``cos/...`` cosines and ``score/...`` set scores at theirs).
    """
    rules = _metric_rules(method)
    rows = {"weights": [0, 0], "prompt": [0, 0], "metrics": [0.0, 0]}
    for _, e in _site_messages(ledger):
        kind = e["kind"]
        if e["arrays"]:
            bits = schemas.array_bits((tuple(a["shape"]), a["dtype"]) for a in e["arrays"])
            row = rows["prompt" if kind == "prompt" else "weights"]
            row[0] += bits
            row[1] += 1
        names = e.get("scalar_keys", {}).get("metrics", [])
        if names:
            bits = sum(
                rules[n].bits()
                if n in rules
                else schemas.COSINE.bits()
                if n.startswith("cos/")
                else schemas.FRACTION.bits()
                if n.startswith("score/")
                else 64.0
                for n in names
            )
            rows["metrics"][0] += bits
            rows["metrics"][1] += 1
    what = {
        "weights": "values inside the declared weights and method state of model replies",
        "prompt": "values of the declared K x D prompt of prompt replies",
        "metrics": "declared metric values, each within its range at its resolution",
    }
    bound = {
        "weights": "none (a formal bound would need DP training of the model)",
        "prompt": "DP prompt tuning when privacy.dp_epsilon is set",
        "metrics": "range and resolution",
    }
    return [
        {
            "channel": k,
            "what": what[k],
            "messages": v[1],
            "bits": float(v[0]),
            "bounded_by": bound[k],
        }
        for k, v in rows.items()
    ]


def _empirical_checks(smd: dict[str, Any]) -> list[dict[str, str]]:
    """Memorisation verdicts for each site that measured its replay."""
    out = []
    for site, info in smd.get("sites", {}).items():
        if "mia_auc" in info:
            verdict, detail = _memorisation_verdict(info)
            out.append(_check("replay memorisation", verdict, detail, scope=site))
    return out


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


def _formal(f: RunFiles) -> dict[str, Any]:
    """The formal claim: the (epsilon, delta) of each site's DP-tuned prompt, read from the prompt logs."""
    priv = f.config.get("privacy", {})
    target = float(priv.get("dp_epsilon", 0.0) or 0.0)
    if target <= 0:
        return {
            "verdict": "none",
            "claim": "no differentially private training is used; there is no formal "
            "(epsilon, delta) guarantee",
        }
    infos = f.smd.get("sites", {})
    tuned = {s: infos[s] for s in f.sites if s in infos}
    if not tuned:
        return {
            "verdict": "none",
            "claim": f"privacy.dp_epsilon={target:g} is set but no site tuned a prompt "
            f"(the method uses no replay); nothing a site sent is DP",
        }
    rows = {
        s: {
            "epsilon": i.get("dp_epsilon"),
            "delta": i.get("dp_delta"),
            "noise_multiplier": i.get("dp_noise_multiplier"),
            "sample_rate": i.get("dp_sample_rate"),
            "steps": i.get("prompt_steps"),
            "cases": i.get("dp_cases"),
            "clip": i.get("dp_clip"),
        }
        for s, i in tuned.items()
    }
    bad = [
        s for s, r in rows.items() if r["epsilon"] is None or r["epsilon"] > target * 1.001 + 1e-9
    ]
    if bad:
        return {
            "verdict": FAIL,
            "sites": rows,
            "claim": f"privacy.dp_epsilon={target:g} is set but the prompt of {', '.join(bad)} has no DP "
            f"accounting within it",
        }
    eps = max(r["epsilon"] for r in rows.values())
    delta = max(r["delta"] for r in rows.values())
    generated = not str(f.config.get("data", {}).get("benchmark", "")).startswith(
        tuple(f"{k}:" for k in ("folder", "prostate", "fundus"))
    )
    unit = (
        "one case (patient) of a site's train data; in the generated benchmarks every slice is a case of "
        "its own"
        if generated
        else "one case (patient) of a site's train data, all its slices together"
    )
    notes = [
        "the scalar evaluation, fidelity and memorisation figures a site sends are not covered"
    ]
    if priv.get("exports", "model") == "model":
        notes.insert(
            0,
            "in model mode the segmentation weights a site returns after its visit are not covered "
            "by this bound",
        )
    return {
        "verdict": "bounded",
        "epsilon": eps,
        "delta": delta,
        "sites": rows,
        "notes": notes,
        "claim": f"each site's exported prompt is ({eps:.3g}, {delta:.3g})-differentially private with respect "
        f"to {unit} (DP-SGD prompt tuning, per-case clipping, Poisson sampling, Opacus's RDP "
        f"accountant); " + "; ".join(notes),
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


def assemble_audit(f: RunFiles) -> dict[str, Any]:
    """The audit of the files read from one run folder."""
    counts, exported = _exported(f.ledger)
    file_check, file_rows = _file_access(f.trace, f.sites_info.get("data_root"))
    exports = f.config.get("privacy", {}).get("exports", "model")
    structural = [
        _egress_kind_check(f.ledger),
        _exports_check(f.ledger, exports),
        _image_shape_check(f.ledger, f.facts),
        *(_guard_check(s, f.guard.get(s)) for s in f.sites),
        file_check,
        _trace_coverage(f.trace_files, f.sites),
    ]
    claims = _claims(structural, _empirical_checks(f.smd), _formal(f))
    return {
        "run": str(f.run_dir),
        "method": f.config["run"]["method"],
        "privacy_mode": f.config.get("privacy", {}).get("mode", "strict"),
        "exports": exports,
        "private_method": not f.guard or all(g.get("mode") != "record" for g in f.guard.values()),
        "verdict": FAIL
        if FAIL in (claims["structural"]["verdict"], claims["formal"]["verdict"])
        else PASS,
        "claims": claims,
        "sites": _site_summary(f, counts, exported),
        "file_access": [
            {"role": r, "site_data": o, "opens": n, "processes": _process_count(f.trace, r)}
            for (r, o), n in sorted(file_rows.items())
        ],
        "ledger": {"messages": len(f.ledger), "bytes": sum(e["bytes"] for e in f.ledger)},
        "open_channels": open_channels(f.ledger, f.config["run"]["method"]),
        "isolation": process_isolation(f.actors, f.config.get("runtime", {}).get("engine", "ray")),
        "placement": [
            {"session": i, "actor": name, **where}
            for i, sess in enumerate(f.actors.get("sessions", []))
            for name, where in sorted(sess["actors"].items())
        ],
    }


def write_audit(run_dir: Path, audit: dict[str, Any]) -> None:
    """Write the audit as ``privacy_audit.json``, ``.md`` and ``.html`` into the run folder."""
    write_json(run_dir / "privacy_audit.json", audit)
    from simulator.driver.audit_report import audit_html, audit_markdown

    md = audit_markdown(audit)
    (run_dir / "privacy_audit.md").write_text(md)
    (run_dir / "privacy_audit.html").write_text(audit_html(audit, md))


def build_audit(run_dir: Path, write: bool = True) -> dict[str, Any]:
    """Audit a run folder from its own files; nothing is recomputed from private data."""
    run_dir = Path(run_dir)
    audit = assemble_audit(read_run_files(run_dir))
    if write:
        write_audit(run_dir, audit)
    return audit
