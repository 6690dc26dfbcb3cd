"""The empirical side of the audit (replay memorisation) and the capacity of the open channels."""

from __future__ import annotations

from typing import Any

from simulator import schemas
from simulator.driver.audit.checks import PASS, WARN, Entry, check, site_messages


def memorisation_verdict(m: dict[str, float]) -> tuple[str, str]:
    copies = m.get("nn_fraction_under_threshold", 0.0)
    ratio = m.get("nn_ratio_flagged_fraction", 0.0)
    auc_low = m.get("mia_auc_low", 0.5)
    notes = [
        f"{100 * copies:.1f}% of synthetic images within {m.get('nn_threshold', 0):.3f} RMS of a "
        "real one",
        f"{100 * ratio:.1f}% flagged by the ratio test",
        f"membership AUC {m.get('mia_auc', float('nan')):.3f} "
        f"[{m.get('mia_auc_low', float('nan')):.3f}, {m.get('mia_auc_high', float('nan')):.3f}]",
    ]
    bad = copies > 0 or ratio > 0.05 or auc_low > 0.6
    return (WARN if bad else PASS), "; ".join(notes)


def metric_rules(method: str) -> dict[str, Any]:
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


def open_channels(ledger: list[Entry], config: dict[str, Any]) -> list[dict[str, Any]]:
    """What the messages sites sent could carry at most, by channel, in bits for the whole run.

    The schema fixes every message's shape, so what stays open is the values in declared places:
    each value of a declared array at its dtype's width, each scalar at the bits the site counted
    for it (its declared range and resolution; for a ledger written before sites counted, the
    rules of ``method``), and the timing of replies, which the learner measures itself.
    """
    rules = metric_rules(config["run"]["method"])
    rows = {"weights": [0, 0], "prompt": [0, 0], "metrics": [0.0, 0], "timing": [0.0, 0]}
    for _, e in site_messages(ledger):
        kind = e["kind"]
        rows["timing"][1] += 1
        if e["arrays"]:
            bits = schemas.array_bits((tuple(a["shape"]), a["dtype"]) for a in e["arrays"])
            row = rows["prompt" if kind == "prompt" else "weights"]
            row[0] += bits
            row[1] += 1
        names = e.get("scalar_keys", {}).get("metrics", [])
        if "bits" in e:
            rows["metrics"][0] += float(e["bits"])
            rows["metrics"][1] += 1
        elif names:
            bits = sum(
                rules[n].bits()
                if n in rules
                else schemas.COSINE.bits()
                if n.startswith("cos/")
                else schemas.SHARE.bits()
                if n.startswith("score/")
                else 64.0
                for n in names
            )
            rows["metrics"][0] += bits
            rows["metrics"][1] += 1
    priv = config.get("privacy", {})
    dp = float(priv.get("dp_epsilon", 0.0) or 0.0)
    what = {
        "weights": "values inside the declared weights and method state of model replies",
        "prompt": "values of the declared K x D prompt of prompt replies",
        "metrics": "declared scalars, each within its range at its resolution",
        "timing": "when each reply arrives (measured by the learner itself)",
    }
    bound = {
        "weights": "none (a formal bound would need DP training of the model)",
        "prompt": f"DP prompt tuning at epsilon {dp:g} (the formal claim)"
        if dp > 0
        else "none (DP prompt tuning when privacy.dp_epsilon is set)",
        "metrics": "range and resolution, and each site's cap of scalar bits per run",
        "timing": "none (open; not counted in bits)",
    }
    return [
        {
            "channel": k,
            "what": what[k],
            "messages": v[1],
            "bits": float(v[0]) if k != "timing" else None,
            "bounded_by": bound[k],
        }
        for k, v in rows.items()
    ]


def empirical_checks(smd: dict[str, Any]) -> list[dict[str, str]]:
    """Memorisation verdicts for each site that measured its replay."""
    out = []
    for site, info in smd.get("sites", {}).items():
        if "mia_auc" in info:
            verdict, detail = memorisation_verdict(info)
            out.append(check("replay memorisation", verdict, detail, scope=site))
    return out
