"""Plots of one run: a heat map of R and the Mem/Gen curves per stage."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulator.metrics import gen_per_stage, mem_per_stage  # noqa: E402


def plot_R(R: np.ndarray, order: list[str], path: Path, title: str = "") -> None:
    """Heat map of R: rows are stages (0 = untrained), columns sites in visiting order."""
    T = R.shape[1]
    fig, ax = plt.subplots(figsize=(1.1 * T + 2.5, 0.8 * (T + 1) + 1.5))
    im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(R.shape[0]):
        for j in range(T):
            ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center",
                    color="white" if R[i, j] < 0.6 else "black", fontsize=8)
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
