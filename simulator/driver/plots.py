"""Every plot smg-sim draws: a run's R, Mem/Gen, alignment and timings, and a comparison's bars.

Figures are built as :class:`matplotlib.figure.Figure` objects and saved directly, without
pyplot: no global backend is switched at import and no figure is left open in a process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from simulator.metrics import METRIC_NAMES, gen_per_stage, mem_per_stage


def _save(fig: Figure, path: Path, tight: bool = False) -> None:
    fig.savefig(path, dpi=110, **({"bbox_inches": "tight"} if tight else {}))


def plot_timings(stage_logs: list[dict], path: Path, title: str = "") -> None:
    """A stacked bar per stage: seconds per phase."""
    from simulator.driver.phases import PHASES

    stages = [s for s in stage_logs if "phases" in s]
    if not stages:
        return
    fig = Figure(figsize=(1.0 * len(stages) + 3.5, 3.8))
    ax = fig.subplots()
    bottom = np.zeros(len(stages))
    tab10 = colormaps["tab10"]
    for i, phase in enumerate(PHASES):
        vals = np.array([s["phases"].get(phase, 0.0) for s in stages])
        if vals.any():
            ax.bar(range(len(stages)), vals, bottom=bottom, label=phase, color=tab10(i % 10))
            bottom += vals
    ax.set_xticks(range(len(stages)), [str(s["stage"]) for s in stages])
    ax.set_xlabel("stage (0: the untrained model's evaluation)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=9)
    _save(fig, path, tight=True)


def plot_R(R: np.ndarray, order: list[str], path: Path, title: str = "") -> None:
    """Heat map of R: rows are stages (0 = untrained), columns sites in visiting order."""
    T = R.shape[1]
    fig = Figure(figsize=(1.1 * T + 2.5, 0.8 * (T + 1) + 1.5))
    ax = fig.subplots()
    im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(R.shape[0]):
        for j in range(T):
            colour = "white" if R[i, j] < 0.6 else "black"
            ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", color=colour, fontsize=8)
            if i == j + 1:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    ax.set_xticks(range(T), order, rotation=45, ha="right")
    ax.set_yticks(range(T + 1), ["untrained"] + [f"{i}: {s}" for i, s in enumerate(order, 1)])
    ax.set_xlabel("evaluated site (visiting order)")
    ax.set_ylabel("after stage")
    ax.set_title(title or "Dice R[stage][site] (red: site just visited)")
    fig.colorbar(im, ax=ax, label="Dice")
    fig.tight_layout()
    _save(fig, path)


def plot_mem_gen(R: np.ndarray, path: Path, title: str = "") -> None:
    """Mem (mean Dice on earlier sites) and Gen (on later sites) after each stage."""
    T = R.shape[1]
    stages = np.arange(1, T + 1)
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
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
    _save(fig, path)


def cosine_matrices(stage_logs: list[dict]) -> list[tuple[int, list[str], np.ndarray]]:
    """Per stage with a ``cos/<a>/<b>`` summary: (stage, domain names, cosine matrix)."""
    out = []
    for logs in stage_logs:
        pairs = {tuple(k.split("/")[1:]): v for k, v in logs.items() if k.startswith("cos/")}
        if not pairs:
            continue
        names = sorted({n for pair in pairs for n in pair})
        M = np.eye(len(names))
        for (a, b), v in pairs.items():  # each pair once: the matrix is symmetric
            M[names.index(a), names.index(b)] = M[names.index(b), names.index(a)] = v
        out.append((int(logs["stage"]), names, M))
    return out


def plot_alignment(stage_logs: list[dict], path: Path, title: str = "") -> bool:
    """Per stage, the site-by-site gradient cosine matrix at the end of the stage; False if none."""
    mats = cosine_matrices(stage_logs)
    if not mats:
        return False
    fig = Figure(figsize=(2.6 * len(mats) + 1, 3.0))
    axes = fig.subplots(1, len(mats), squeeze=False)
    for ax, (stage, names, M) in zip(axes[0], mats, strict=True):
        im = ax.imshow(M, vmin=-1, vmax=1, cmap="RdBu")
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"stage {stage}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="gradient cosine", shrink=0.8)
    default = "Gradient cosines between sites at the end of each stage (blue: aligned)"
    fig.suptitle(title or default, fontsize=9)
    _save(fig, path, tight=True)
    return True


def _colour(i: int):
    """A distinct colour for each of up to 20 methods (tab10, then tab20's light shades)."""
    return colormaps["tab20"]((2 * (i - 10) + 1) % 20) if i >= 10 else colormaps["tab10"](i)


def plot_comparison(table: pd.DataFrame, out: Path) -> None:
    """``compare_bars.png`` (each metric's mean and spread per method) and
    ``compare_mem_gen.png``."""
    n = len(table)
    fig = Figure(figsize=(3.2 * len(METRIC_NAMES), 3.6))
    axes = fig.subplots(1, len(METRIC_NAMES))
    for ax, k in zip(axes, METRIC_NAMES, strict=True):
        colours = [_colour(i) for i in range(n)]
        ax.bar(range(n), table[f"{k}_mean"], yerr=table[f"{k}_std"], capsize=3, color=colours)
        ax.set_xticks(range(n), table["method"], rotation=60, ha="right", fontsize=8)
        ax.set_title(k)
        ax.axhline(0, color="black", lw=0.5)
    fig.tight_layout()
    _save(fig, out / "compare_bars.png")
    fig = Figure(figsize=(5, 4.2))
    ax = fig.subplots()
    for i, r in table.iterrows():
        ax.errorbar(
            r["Gen_mean"],
            r["Mem_mean"],
            xerr=r["Gen_std"],
            yerr=r["Mem_std"],
            fmt="o",
            color=_colour(i),
            capsize=3,
            label=r["method"],
            markersize=7 - 3 * (i >= 10),
        )
    ax.set_xlabel("Gen (unseen sites)")
    ax.set_ylabel("Mem (earlier sites)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out / "compare_mem_gen.png")
