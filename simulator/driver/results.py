"""What a finished run writes: R, metrics, guard reports, weights, plots, and the summary table."""

from __future__ import annotations

import numpy as np

from simulator.driver.ledger import Ledger
from simulator.driver.plan import RunPlan
from simulator.driver.plots import plot_alignment, plot_mem_gen, plot_R, plot_timings
from simulator.driver.runfolder import RunFolder, r_frame, write_json
from simulator.metrics import all_metrics, gen_per_stage, mem_per_stage


def summary_table(R: np.ndarray, order: list[str], metrics: dict[str, float]) -> str:
    """The table printed at the end of a run."""
    df = r_frame(R, order)
    lines = [
        "Dice R[stage][site] (sites in visiting order):",
        df.to_string(index=False, float_format=lambda v: f"{v:.3f}"),
        "",
    ]
    lines.append(
        "  ".join(
            f"{k} {v:+.3f}" if k in ("BWT", "FWT") else f"{k} {v:.3f}" for k, v in metrics.items()
        )
    )
    return "\n".join(lines)


def guard_totals(guard: dict[str, dict]) -> dict[str, float]:
    """The egress guards' counts and seconds summed over sites."""
    return {
        "messages": sum(g["checked_messages"] for g in guard.values()),
        "bytes": sum(g["checked_bytes"] for g in guard.values()),
        "seconds": sum(g["seconds"] for g in guard.values()),
        "build_seconds": sum(g.get("build_seconds", 0.0) for g in guard.values()),
        "violations": sum(g["violations"] for g in guard.values()),
    }


def merge_guard_sessions(sessions: list[dict], restarts: int = 0) -> dict:
    """One site's guard report from the reports of each start of its process: counts and seconds
    summed, and how often the process was restarted."""
    out = dict(sessions[0])
    for rep in sessions[1:]:
        for k, v in rep.items():
            if k in NOT_SUMMED:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
    # what a site counts over its processes (its budget, its trace): the latest figures
    latest = max(sessions, key=lambda r: (r.get("trace_lines", 0), r.get("scalar_bits", 0)))
    out.update({k: latest[k] for k in NOT_SUMMED if k in latest})
    out["restarts"] = restarts
    return out


#: guard-report figures that are not per process but the site's so far
NOT_SUMMED = ("scalar_bits", "scalar_bits_cap", "trace_lines", "trace_digest")


def write_results(
    folder: RunFolder,
    plan: RunPlan,
    R: np.ndarray,
    guard: dict[str, dict],
    weights: dict[str, np.ndarray],
    stage_logs: list[dict],
) -> None:
    """Write R, guard reports, final weights and plots (metrics.json comes last, with the
    timings)."""
    write_json(folder.file("guard.json"), guard)
    folder.write_R(R, plan.order)
    folder.write_weights(weights)
    cfg = plan.config
    title = f"{cfg.run.method} ({cfg.run.profile}, seed {cfg.run.seed})"
    plot_R(R, plan.order, folder.file("R.png"), title=f"Dice R: {title}")
    plot_mem_gen(R, folder.file("mem_gen.png"), title=f"Mem/Gen: {title}")
    plot_alignment(
        stage_logs,
        folder.file("alignment.png"),
        title=f"{cfg.run.method}: gradient cosines "
        "between sites at the end of each stage (blue: aligned, red: conflicting)",
    )
    plot_timings(stage_logs, folder.file("timings.png"), title=f"Seconds per phase: {title}")


def write_metrics(
    folder: RunFolder,
    plan: RunPlan,
    R: np.ndarray,
    guard: dict[str, dict],
    timings: dict,
    ledger: Ledger,
) -> dict[str, float]:
    """``metrics.json``: the metrics of R, per-stage curves, timings, ledger and guard totals."""
    m = all_metrics(R)
    write_json(
        folder.file("metrics.json"),
        {
            "metrics": m,
            "order": plan.order,
            "mem_per_stage": mem_per_stage(R),
            "gen_per_stage": gen_per_stage(R),
            "timings": timings,
            "ledger": {"messages": ledger.count, "bytes": ledger.bytes},
            "egress_guard": guard_totals(guard),
        },
    )
    return m
