"""The privacy audit as people read it: Markdown and HTML from the audit's dictionary."""

from __future__ import annotations

import html
from typing import Any


def audit_markdown(a: dict[str, Any]) -> str:
    """A readable report of one audit."""
    out = [
        f"# Privacy audit: {a.get('verdict_text', a['verdict'].upper())}",
        "",
        f"Run `{a['run']}`, method `{a['method']}`, guard mode `{a['privacy_mode']}`, "
        f"exports `{a.get('exports', 'model')}`"
        + (
            ""
            if a["private_method"]
            else " (NON-PRIVATE reference method: real data leaves sites by design)"
        ),
        "",
        "## Trust model",
        "",
        *(f"* {line}" for line in a.get("trust_model", [])),
        "",
    ]
    for name in ("structural", "empirical", "formal"):
        c = a["claims"][name]
        out += [f"## {name.capitalize()}: {c['verdict']}", "", c["claim"] + ".", ""]
        if c.get("checks"):
            out += ["| check | scope | verdict | detail |", "|---|---|---|---|"]
            out += [
                f"| {k['check']} | {k['scope']} | {k['verdict']} | {k['detail']} |"
                for k in c["checks"]
            ]
            out.append("")
        if c.get("sites"):
            out += [
                "| site | epsilon | delta | noise multiplier | sample rate | steps | cases |",
                "|---|---|---|---|---|---|---|",
            ]
            out += [
                f"| {s} | {r['epsilon']:.3g} | {r['delta']:.3g} | {r['noise_multiplier']:.3g} | "
                f"{r['sample_rate']:.3g} | {r['steps']} | {r['cases']} |"
                for s, r in c["sites"].items()
                if r.get("epsilon") is not None
            ]
            out.append("")
    out += [
        "## Bytes exported per site",
        "",
        "| site | messages | prompt | model | metrics | site data |",
        "|---|---|---|---|---|---|",
    ]
    for s, info in a["sites"].items():
        e = info["exported_bytes"]
        out.append(
            f"| {s} | {info['messages']} | {e.get('prompt', 0)} | {e.get('model', 0)} | "
            f"{e.get('metrics', 0)} | {info['data_bytes']} |"
        )
    out += [
        "",
        "## File access to site data",
        "",
        "| process (role) | site data opened | opens | processes |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {r['role']} | {r['site_data']} | {r['opens']} | {r.get('processes', '')} |"
        for r in a["file_access"]
    ] or ["| (none) | | | |"]
    if a.get("open_channels"):
        out += [
            "",
            "## Open channels (what the schema still lets through, at most)",
            "",
            "Every message a site sent had a declared shape; what remains is the values in "
            "declared "
            "places. Capacity in bits for the whole run:",
            "",
            "| channel | what | messages | bits | bounded by |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| {c['channel']} | {c['what']} | {c['messages']} | "
            f"{'open' if c['bits'] is None else format(c['bits'], '.3g')} | {c['bounded_by']} |"
            for c in a["open_channels"]
        ]
    if a.get("scalar_bits"):
        out += scalar_bits_section(a["scalar_bits"])
    if a.get("limits"):
        out += ["", "## What the trace cannot show", ""] + [f"* {line}" for line in a["limits"]]
    if a.get("isolation"):
        out += [
            "",
            f"## One process per site: {a['isolation']['verdict']}",
            "",
            a["isolation"]["detail"] + ".",
        ]
    if a.get("placement"):
        out += [
            "",
            "## Where each process ran",
            "",
            "| driver start | actor | node | node address | pid |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| {r['session']} | {r['actor']} | {r['node_id'][:12]} | {r['node_ip']} | {r['pid']} |"
            for r in a["placement"]
        ]
    mem = {s: i["memorisation"] for s, i in a["sites"].items() if i["memorisation"]}
    if mem:
        keys = [
            "nn_distance_min",
            "nn_distance_median",
            "real_nn_distance_min",
            "nn_fraction_under_threshold",
            "nn_ratio_flagged_fraction",
            "mia_auc",
            "mia_auc_low",
            "mia_auc_high",
        ]
        out += [
            "",
            "## Memorisation of the replay (computed inside each site)",
            "",
            "| site | " + " | ".join(keys) + " |",
            "|---" * (len(keys) + 1) + "|",
        ]
        out += [
            f"| {s} | " + " | ".join(f"{m.get(k, float('nan')):.3f}" for k in keys) + " |"
            for s, m in mem.items()
        ]
    out += [
        "",
        f"Ledger: {a['ledger']['messages']} messages, {a['ledger']['bytes']} array bytes.",
        "",
    ]
    return "\n".join(out)


def audit_html(a: dict[str, Any], md: str) -> str:
    """The report as a page of its own."""
    color = {"pass": "#1a7f37", "fail": "#cf222e"}.get(a["verdict"], "#9a6700")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Privacy audit</title></head>"
        f"<body style='font-family:sans-serif;max-width:1100px'>"
        f"<h1 style='color:{color}'>Privacy audit: {a.get('verdict_text', a['verdict'].upper())}"
        "</h1>"
        f"<pre style='white-space:pre-wrap'>{html.escape(md)}</pre></body></html>"
    )


def scalar_bits_section(table: dict[str, dict]) -> list[str]:
    """The scalar budget: bits each site sent the learner, per visit and per run, by kind."""
    kinds = sorted({k for r in table.values() for k in r["by_kind"]})
    out = [
        "",
        "## Scalar budget (bits each site sent the learner, against its cap)",
        "",
        "Each reply's capacity as the site counted it (the declared range and resolution of each "
        "scalar); a site refuses a reply that would pass its cap.",
        "",
        f"| site | {' | '.join(kinds)} | visits | bits per visit (max / mean) | run | cap |",
        f"|---|{'---|' * len(kinds)}---|---|---|---|",
    ]
    for site, r in table.items():
        cells = " | ".join(f"{r['by_kind'].get(k, 0):.0f}" for k in kinds)
        out.append(
            f"| {site} | {cells} | {r['visits']} | {r['visit_max']:.0f} / {r['visit_mean']:.0f} | "
            f"{r['total']:.0f} | {r.get('cap', '?')} |"
        )
    return out
