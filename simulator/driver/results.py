"""What a finished run writes: R, metrics, guard reports, weights, plots, and the summary table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulator.driver.ledger import Ledger  # noqa: E402
from simulator.driver.plan import RunPlan  # noqa: E402
from simulator.driver.runfolder import RunFolder, r_frame, write_json  # noqa: E402
from simulator.metrics import all_metrics, gen_per_stage, mem_per_stage  # noqa: E402


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
    summed, violations concatenated, and how often the process was restarted."""
    out = dict(sessions[0])
    for rep in sessions[1:]:
        for k, v in rep.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
        out["violation_list"] = out["violation_list"] + rep["violation_list"]
    out["restarts"] = restarts
    return out


def write_results(
    folder: RunFolder,
    plan: RunPlan,
    R: np.ndarray,
    guard: dict[str, dict],
    weights: dict[str, np.ndarray],
    stage_logs: list[dict],
) -> None:
    """Write R, guard reports, final weights and plots (metrics.json comes last, with the timings)."""
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


def plot_timings(stage_logs: list[dict], path: Path, title: str = "") -> None:
    """A stacked bar per stage: seconds per phase."""
    from simulator.driver.phases import PHASES

    stages = [s for s in stage_logs if "phases" in s]
    if not stages:
        return
    fig, ax = plt.subplots(figsize=(1.0 * len(stages) + 3.5, 3.8))
    bottom = np.zeros(len(stages))
    for i, phase in enumerate(PHASES):
        vals = np.array([s["phases"].get(phase, 0.0) for s in stages])
        if vals.any():
            ax.bar(range(len(stages)), vals, bottom=bottom, label=phase, color=plt.cm.tab10(i % 10))
            bottom += vals
    ax.set_xticks(range(len(stages)), [str(s["stage"]) for s in stages])
    ax.set_xlabel("stage (0: the untrained model's evaluation)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_R(R: np.ndarray, order: list[str], path: Path, title: str = "") -> None:
    """Heat map of R: rows are stages (0 = untrained), columns sites in visiting order."""
    T = R.shape[1]
    fig, ax = plt.subplots(figsize=(1.1 * T + 2.5, 0.8 * (T + 1) + 1.5))
    im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(R.shape[0]):
        for j in range(T):
            ax.text(
                j,
                i,
                f"{R[i, j]:.2f}",
                ha="center",
                va="center",
                color="white" if R[i, j] < 0.6 else "black",
                fontsize=8,
            )
            if i == j + 1:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    ax.set_xticks(range(T), order, rotation=45, ha="right")
    ax.set_yticks(range(T + 1), ["untrained"] + [f"{i}: {s}" for i, s in enumerate(order, 1)])
    ax.set_xlabel("evaluated site (visiting order)")
    ax.set_ylabel("after stage")
    ax.set_title(title or "Dice R[stage][site] (red: site just visited)")
    fig.colorbar(im, ax=ax, label="Dice")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mem_gen(R: np.ndarray, path: Path, title: str = "") -> None:
    """Mem (mean Dice on earlier sites) and Gen (on later sites) after each stage."""
    T = R.shape[1]
    stages = np.arange(1, T + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(stages, mem_per_stage(R), "o-", label="Mem: sites visited before")
    ax.plot(stages, gen_per_stage(R), "s-", label="Gen: sites not yet visited")
    ax.plot(stages, [R[i, i - 1] for i in stages], "^--", label="site just visited", alpha=0.7)
    ax.set_xlabel("stage")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.set_xticks(stages)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Memorizability and generalizability per stage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cosine_matrices(stage_logs: list[dict]) -> list[tuple[int, list[str], np.ndarray]]:
    """Per stage with a ``cos/<a>/<b>`` summary: (stage, domain names, cosine matrix)."""
    out = []
    for logs in stage_logs:
        pairs = {tuple(k.split("/")[1:]): v for k, v in logs.items() if k.startswith("cos/")}
        if not pairs:
            continue
        names = sorted({n for pair in pairs for n in pair})
        M = np.eye(len(names))
        for (a, b), v in pairs.items():
            M[names.index(a), names.index(b)] = v
        out.append((int(logs["stage"]), names, M))
    return out


def plot_alignment(stage_logs: list[dict], path: Path, title: str = "") -> bool:
    """Per stage, the site-by-site gradient cosine matrix at the end of the stage; False if none."""
    mats = cosine_matrices(stage_logs)
    if not mats:
        return False
    fig, axes = plt.subplots(1, len(mats), figsize=(2.6 * len(mats) + 1, 3.0), squeeze=False)
    for ax, (stage, names, M) in zip(axes[0], mats, strict=True):
        im = ax.imshow(M, vmin=-1, vmax=1, cmap="RdBu")
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"stage {stage}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="gradient cosine", shrink=0.8)
    fig.suptitle(
        title or "Gradient cosines between sites at the end of each stage (blue: aligned)",
        fontsize=9,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True
