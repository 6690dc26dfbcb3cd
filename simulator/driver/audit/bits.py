"""The scalar budget in the audit: bits each site sent the learner, per visit and per run, by
message kind, against the site's own cap.

Every reply of a site carries the capacity the site counted for it (``bits`` in its meta, from
the declared range and resolution of each scalar); the ledger keeps it. A site refuses a reply
that would pass its cap, so the ledger's sum per site must stay within it: a site whose replies
pass it, or a reply without its count, fails the check.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from simulator.driver.audit.checks import FAIL, PASS, Entry, check

#: the requests whose replies belong to a visit (start, chunks of steps, the model back)
VISIT_REQUESTS = ("visit", "train")


def scalar_bits(ledger: list[Entry]) -> dict[str, dict[str, Any]]:
    """Per site: bits by message kind, per visit (the largest and the mean), the total, and how
    many of its replies carried no count."""
    out: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"by_kind": defaultdict(float), "total": 0.0, "uncounted": 0, "visits": []}
    )
    asked: dict[str, str] = {}  # the kind of the latest request to each site
    visit_bits: dict[str, float] = defaultdict(float)
    for e in ledger:
        if e["dst"].startswith("site:"):
            site = e["dst"].split(":", 1)[1]
            asked[site] = e["kind"]
            continue
        if not e["src"].startswith("site:"):
            continue
        site = e["src"].split(":", 1)[1]
        row = out[site]
        if "bits" not in e:
            row["uncounted"] += 1
            continue
        bits = float(e["bits"])
        row["by_kind"][e["kind"]] += bits
        row["total"] += bits
        if asked.get(site) in VISIT_REQUESTS or e["kind"] == "model":
            visit_bits[site] += bits
        if e["kind"] == "model":  # a visit ends with its model
            row["visits"].append(visit_bits.pop(site, 0.0))
    return {
        s: {
            "by_kind": {k: round(v, 1) for k, v in sorted(r["by_kind"].items())},
            "total": round(r["total"], 1),
            "uncounted": r["uncounted"],
            "visits": len(r["visits"]),
            "visit_max": round(max(r["visits"], default=0.0), 1),
            "visit_mean": round(sum(r["visits"]) / len(r["visits"]), 1) if r["visits"] else 0.0,
        }
        for s, r in sorted(out.items())
    }


def scalar_budget_checks(
    ledger: list[Entry], guard: dict[str, dict[str, Any]], sites: list[str]
) -> tuple[list[dict[str, str]], dict[str, dict[str, Any]]]:
    """One check per site (within its cap, every reply counted) and the bits table."""
    table = scalar_bits(ledger)
    checks = []
    for s in sites:
        row = table.get(s, {"total": 0.0, "uncounted": 0})
        g = guard.get(s) or {}
        cap = g.get("scalar_bits_cap")
        if cap is None:
            checks.append(check("scalar budget", FAIL, "the site reported no cap", scope=s))
            continue
        row["cap"] = int(cap)
        row["site_count"] = int(g.get("scalar_bits", 0))
        over = row["total"] > cap
        detail = f"{row['total']:.0f} of {int(cap)} bits"
        if row["uncounted"]:
            detail += f"; {row['uncounted']} repl(ies) without a count"
        if over:
            detail += " (over the cap)"
        ok = not over and not row["uncounted"]
        checks.append(check("scalar budget", PASS if ok else FAIL, detail, scope=s))
    return checks, table
