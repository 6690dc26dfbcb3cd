"""The formal claim of the audit: the (epsilon, delta) of each site's DP-tuned prompt, if any."""

from __future__ import annotations

from typing import Any

from simulator.benchmarks import catalog
from simulator.driver.audit.checks import FAIL
from simulator.driver.audit.files import RunFiles


def formal_claim(f: RunFiles) -> dict[str, Any]:
    """The formal claim: the (epsilon, delta) of each site's DP-tuned prompt, read from the prompt
    logs."""
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
            "claim": f"privacy.dp_epsilon={target:g} is set but the prompt of {', '.join(bad)} "
            f"has no DP "
            f"accounting within it",
        }
    eps = max(r["epsilon"] for r in rows.values())
    delta = max(r["delta"] for r in rows.values())
    generated = not catalog.is_user_data(str(f.config.get("data", {}).get("benchmark", "phantom")))
    unit = (
        "one case (patient) of a site's train data; in the generated benchmarks every slice is a "
        "case of "
        "its own"
        if generated
        else "one case (patient) of a site's train data, all its slices together"
    )
    notes = [
        "the non-DP outputs of a site under DP are its evaluation Dice on its test split and its "
        "TSTR figures (train on its replay, test on its test split): quantised and counted in its "
        "scalar budget; it sends no other figure computed on its images (no intensity or "
        "foreground statistics, no nearest-neighbour or membership figures, no attribution "
        "scores)"
    ]
    if priv.get("exports", "model") == "model":
        notes.insert(
            0,
            "in model mode the segmentation weights a site returns after its visit, and the "
            "training losses of the visit, are not covered by this bound",
        )
    return {
        "verdict": "bounded",
        "epsilon": eps,
        "delta": delta,
        "sites": rows,
        "notes": notes,
        "claim": f"each site's exported prompt is ({eps:.3g}, {delta:.3g})-differentially private "
        f"with respect "
        f"to {unit} (DP-SGD prompt tuning, per-case clipping, Poisson sampling, Opacus's RDP "
        f"accountant); " + "; ".join(notes),
    }
