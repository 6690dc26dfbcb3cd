"""The pre-registered grid's results, tested by the rule PLAN.md fixed before any run.

Usage: ``.venv/bin/python docs/compare/fresh/results.py`` reads the collected comparisons
``docs/compare/fresh_phantom/`` and ``docs/compare/fresh_mni152/`` (``render.py collect fresh_B
compare/fresh-B --baseline smd_replay_matched``: their ``runs.csv``, each run's
``provenance.json`` and, for full-precision metrics, its ``metrics.json``) and writes into
``docs/compare/fresh/``:

- ``RESULTS.md``: whether every run ran the planned code and passed its audit; per benchmark the
  three conditions of the hypothesis (``smg`` minus ``smd_replay_matched``: Mem and Gen paired
  95 % bootstrap CIs above zero, mean LA difference -0.01 or better) with the sign test, and the
  verdict; the moonshot against ``joint``; every method's means; the ablations, ``smd_replay``
  and the other baselines against matched replay; ``smg`` against ``finetune``, ``smd_replay``
  and ``joint``;
- ``SUMMARY.md``: one row per benchmark (runs finished, cells paired, the three conditions'
  differences, ``smg`` minus ``joint`` on Mem, the verdict), which the README includes;
- ``results.csv``: every paired difference the page shows (benchmark, method, baseline, metric,
  cells, wins, mean, CI, sign-test p);
- ``results.png``: each method minus matched replay on Mem, Gen and LA with its CI, per benchmark.

The statistics are the package's own (``simulator.driver.compare.stats.paired_table``:
percentile bootstrap of the mean paired difference, 10,000 resamples, seed 0; exact two-sided
sign test). A benchmark whose grid is not complete is reported as not decided, never as a success
or a failure. PLAN.md is only read.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from simulator.driver.compare.stats import paired_table  # noqa: E402

HERE = Path(__file__).resolve().parent
COMPARE = HERE.parent
PLAN = HERE / "PLAN.md"
BASELINE = "smd_replay_matched"
METHODS = ("smg", "smd_replay_matched", "smd_replay", "smg_mem", "smg_gen", "finetune", "joint")
NON_PRIVATE = ("joint",)
# benchmark -> (collected folder, seeds, orders), as PLAN.md lists them
BENCHMARKS = {
    "phantom": ("fresh_phantom", (5, 6, 7, 8, 9), ("random", "reverse")),
    "mni152": ("fresh_mni152", (5, 6, 7), ("random", "reverse")),
}
MEANS = ("Mem", "Gen", "LA", "Retention", "BWT", "Final")
SHOWN = ("Mem", "Gen", "LA", "Retention")
LA_FLOOR = -0.01
MOONSHOT = -0.05


def planned_digest() -> str:
    """The code digest PLAN.md fixes (64 hex digits in backquotes after 'code digest')."""
    m = re.search(r"code digest\s*`([0-9a-f]{64})`", PLAN.read_text())
    if not m:
        raise SystemExit(f"{PLAN}: no code digest of 64 hex digits found after 'code digest'")
    return m.group(1)


def load(folder: Path) -> pd.DataFrame:
    """The collected runs table, with each run's full code digest from its provenance.json.

    ``runs.csv`` rounds to 4 decimals, which can turn a difference of 0.00006 into a tie and so
    change the sign test; each run's metrics are therefore taken at full precision from its
    ``metrics.json``, as ``compare``'s own ``paired.csv`` uses them.
    """
    path = folder / "runs.csv"
    if not path.exists():
        raise SystemExit(
            f"{path}: not found; collect the grid first with `render.py collect "
            f"{folder.name} compare/{folder.name.replace('_', '-')} --baseline {BASELINE}`"
        )
    runs = pd.read_csv(path)
    digests = []
    for run in runs["run"]:
        prov = folder / "runs" / run / "provenance.json"
        digests.append(
            json.loads(prov.read_text())["sessions"][-1]["code_digest"] if prov.exists() else ""
        )
    runs["code_digest"] = digests
    for i, run in enumerate(runs["run"]):
        path = folder / "runs" / run / "metrics.json"
        if path.exists():
            exact = json.loads(path.read_text()).get("metrics", {})
            for metric in set(exact) & set(runs.columns):
                runs.loc[runs.index[i], metric] = float(exact[metric])
    return runs


def paired(runs: pd.DataFrame, bench: str, method: str, base: str, metric: str) -> dict:
    """``method`` minus ``base`` on ``metric``: the package's paired row (no shared cell: nan)."""
    both = runs[runs["method"].isin([method, base])]
    table = paired_table(both, [metric], base) if base in set(both["method"]) else None
    rows = table[table["method"] == method] if table is not None else pd.DataFrame()
    if rows.empty:
        nan = float("nan")
        empty = {"cells": 0, "wins": 0, "mean_diff": nan, "ci_low": nan, "ci_high": nan}
        return {
            "benchmark": bench,
            "method": method,
            "baseline": base,
            "metric": metric,
            **empty,
            "p_value": 1.0,
        }
    return {"benchmark": bench, **rows.iloc[0].to_dict()}


def _row(r: dict) -> str:
    return (
        f"| {r['method']} | {r['baseline']} | {r['metric']} | {r['cells']} | {r['wins']} | "
        f"{r['mean_diff']:+.3f} | [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['p_value']:.3g} |"
    )


HEADER = [
    "| method | baseline | metric | cells | wins | mean diff | 95 % CI | sign p |",
    "|---|---|---|---|---|---|---|---|",
]


def benchmark_section(
    bench: str, runs: pd.DataFrame, digest: str
) -> tuple[list[str], list[dict], str]:
    """The benchmark's part of RESULTS.md, its paired rows, and its verdict in a few words."""
    _, seeds, orders = BENCHMARKS[bench]
    cells = len(seeds) * len(orders)
    expected = {(m, s, o) for m in METHODS for s in seeds for o in orders}
    found = set(zip(runs["method"], runs["seed"], runs["order"], strict=True))
    missing = sorted(expected - found)
    extra = sorted(found - expected)
    wrong_code = runs.loc[runs["code_digest"] != digest, "run"].tolist()
    private = runs[~runs["method"].isin(NON_PRIVATE)]
    failed = private.loc[private["audit"] != "pass", "run"].tolist()
    complete = not missing and not wrong_code
    lines = [
        f"## {bench}: {cells} fresh cells (seeds {', '.join(map(str, seeds))} x random, reverse)"
    ]
    lines += [
        "",
        f"- Runs finished: {len(found & expected)} of {len(expected)}"
        + (f"; missing {len(missing)}" if missing else "")
        + (f"; outside the plan (ignored): {', '.join(map(str, extra))}" if extra else "")
        + ".",
        f"- Code: {'every run ran' if not wrong_code else 'NOT every run ran'} the planned digest "
        f"`{digest[:12]}`" + (f" (other: {', '.join(wrong_code)})" if wrong_code else "") + ".",
        f"- Privacy audits of the {len(private)} private runs: "
        + ("all pass" if not failed else f"{len(failed)} do not pass: {', '.join(failed)}")
        + f"; `joint` (non-private reference, {int((runs['method'] == 'joint').sum())} runs) "
        "fails by design.",
        "",
    ]
    runs = runs[
        [
            (m, s, o) in expected
            for m, s, o in zip(runs["method"], runs["seed"], runs["order"], strict=True)
        ]
    ]
    rows: list[dict] = []
    test = [paired(runs, bench, "smg", BASELINE, m) for m in ("Mem", "Gen", "LA")]
    rows += test
    holds = [
        test[0]["ci_low"] > 0,
        test[1]["ci_low"] > 0,
        test[2]["mean_diff"] >= LA_FLOOR,
    ]
    names = [
        "Mem: 95 % CI above 0",
        "Gen: 95 % CI above 0",
        f"LA: mean difference >= {LA_FLOOR}",
    ]
    decided = complete and test[0]["cells"] == cells
    lines += [
        "### The hypothesis: `smg` minus `smd_replay_matched`",
        "",
        "| condition | cells | wins | mean diff | 95 % CI | sign p | "
        + ("holds |" if decided else "holds so far |"),
        "|---|---|---|---|---|---|---|",
    ]
    for name, r, ok in zip(names, test, holds, strict=True):
        lines.append(
            f"| {name} | {r['cells']} | {r['wins']} | {r['mean_diff']:+.3f} | "
            f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['p_value']:.3g} | "
            f"{'yes' if ok else '**no**'} |"
        )
    lines.append("")
    if not decided:
        why = [f"{test[0]['cells']} of {cells} cells paired"] if test[0]["cells"] < cells else []
        why += ["runs of other code"] if wrong_code else []
        why += ["runs missing"] if missing and not why else []
        verdict = f"not decided ({'; '.join(why)})"
        lines.append(
            f"**Verdict on {bench}: not decided** ({'; '.join(why)}); the plan tests the "
            "hypothesis on every cell, run by the planned code."
        )
    elif all(holds):
        verdict = "the hypothesis holds"
        lines.append(f"**Verdict on {bench}: the hypothesis holds** (all three conditions).")
    else:
        failing = [n.split(":")[0] for n, ok in zip(names, holds, strict=True) if not ok]
        verdict = f"the hypothesis fails ({', '.join(failing)} not met)"
        lines.append(
            f"**Verdict on {bench}: the hypothesis fails.** Condition(s) not met: "
            f"{', '.join(failing)}."
        )
    moon = paired(runs, bench, "smg", "joint", "Mem")
    rows.append(moon)
    lines += [
        "",
        f"Moonshot (reported, not part of success): `smg` minus `joint` on Mem is "
        f"{moon['mean_diff']:+.3f} [{moon['ci_low']:+.3f}, {moon['ci_high']:+.3f}] over "
        f"{moon['cells']} cells; within {-MOONSHOT:.2f}: "
        f"{'yes' if moon['mean_diff'] >= MOONSHOT else 'no'}.",
        "",
        "### Every method (mean ± std over cells)",
        "",
        "| method | runs | " + " | ".join(MEANS) + " |",
        "|---|---|" + "---|" * len(MEANS),
    ]
    for method in METHODS:
        g = runs[runs["method"] == method]
        if g.empty:
            continue
        vals = [
            f"{g[c].mean():+.3f} ± {g[c].std(ddof=1):.3f}"
            if c == "BWT"
            else f"{g[c].mean():.3f} ± {g[c].std(ddof=1):.3f}"
            for c in MEANS
        ]
        lines.append(f"| {method} | {len(g)} | " + " | ".join(vals) + " |")
    lines += [
        "",
        "### Ablations and baselines against matched replay",
        "",
        "`smg_mem` and `smg_gen` each drop exactly one alignment of `smg` (weight-matched); "
        "`smd_replay` is plain replay of the same synthetic images.",
        "",
        *HEADER,
    ]
    for method in ("smg_mem", "smg_gen", "smd_replay", "finetune", "joint"):
        for metric in SHOWN:
            r = paired(runs, bench, method, BASELINE, metric)
            if r["cells"]:
                rows.append(r)
                lines.append(_row(r))
    lines += ["", "### `smg` against the other baselines", "", *HEADER]
    for base in ("smd_replay", "finetune", "joint"):
        for metric in SHOWN:
            r = paired(runs, bench, "smg", base, metric)
            if r["cells"]:
                rows.append(r)
                lines.append(_row(r))
    lines.append("")
    return lines, rows, verdict


def plot(rows: pd.DataFrame, path: Path) -> None:
    benches = [b for b in BENCHMARKS if b in set(rows["benchmark"])]
    fig, axes = plt.subplots(1, len(benches), figsize=(6 * len(benches), 4.6), squeeze=False)
    methods = ["smg", "smg_mem", "smg_gen", "smd_replay"]
    metrics = ("Mem", "Gen", "LA")
    colors = {"Mem": "tab:blue", "Gen": "tab:orange", "LA": "tab:green"}
    for ax, bench in zip(axes[0], benches, strict=True):
        sub = rows[(rows["benchmark"] == bench) & (rows["baseline"] == BASELINE)]
        for i, method in enumerate(methods):
            for j, metric in enumerate(metrics):
                r = sub[(sub["method"] == method) & (sub["metric"] == metric)]
                if r.empty:
                    continue
                r = r.iloc[0]
                y = i + (j - 1) * 0.22
                ax.errorbar(
                    r["mean_diff"],
                    y,
                    xerr=[[r["mean_diff"] - r["ci_low"]], [r["ci_high"] - r["mean_diff"]]],
                    fmt="o",
                    color=colors[metric],
                    label=metric if i == 0 else None,
                    capsize=3,
                )
        ax.axvline(0, color="grey", lw=0.8)
        ax.axvline(LA_FLOOR, color="tab:green", lw=0.6, ls=":", label=f"LA floor {LA_FLOOR}")
        ax.set_yticks(range(len(methods)), methods)
        ax.invert_yaxis()
        n = int(sub["cells"].max()) if not sub.empty else 0
        ax.set_title(f"{bench}: minus {BASELINE} ({n} cells, 95 % CI)")
        ax.set_xlabel("paired difference in Dice")
    # one legend below the panels, where it hides no interval
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        raise SystemExit(f"results.py takes no arguments (got {' '.join(argv)}); see its docstring")
    digest = planned_digest()
    lines = [
        "# Pre-registered grid on fresh cells: results",
        "",
        "Generated by `docs/compare/fresh/results.py` from the collected runs "
        "(`docs/compare/fresh_phantom/`, `docs/compare/fresh_mni152/`), tested by the rule "
        "`docs/compare/fresh/PLAN.md` fixed before any run. Differences are paired per "
        "(seed, order) cell; CI: percentile bootstrap 95 % CI of the mean difference; "
        "sign p: exact two-sided sign test.",
        "",
    ]
    rows: list[dict] = []
    summary = [
        "# Pre-registered grid: the verdicts",
        "",
        "`smg` minus `smd_replay_matched` per benchmark, paired over the fresh (seed, order) "
        "cells, with the percentile bootstrap 95 % CI (`docs/compare/fresh/RESULTS.md`, "
        "generated by `docs/compare/fresh/results.py`).",
        "",
        "| benchmark | runs | cells paired | Mem | Gen | LA | `smg` - `joint` Mem | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for bench, (name, seeds, orders) in BENCHMARKS.items():
        folder = COMPARE / name
        planned = len(METHODS) * len(seeds) * len(orders)
        if not (folder / "runs.csv").exists():
            lines += [f"## {bench}", "", f"Not run yet (no `{folder.name}/runs.csv`).", ""]
            summary.append(f"| {bench} | 0 of {planned} | 0 | | | | | not run yet |")
            continue
        runs = load(folder)
        section, found, verdict = benchmark_section(bench, runs, digest)
        lines += section
        rows += found
        smg = [r for r in found if r["method"] == "smg"]
        mem, gen, la = (
            next(r for r in smg if r["baseline"] == BASELINE and r["metric"] == m)
            for m in ("Mem", "Gen", "LA")
        )
        moon = next(r for r in smg if r["baseline"] == "joint" and r["metric"] == "Mem")
        ci = "{:+.3f} [{:+.3f}, {:+.3f}]".format
        summary.append(
            f"| {bench} | {len(runs)} of {planned} | {mem['cells']} of {len(seeds) * len(orders)} "
            f"| {ci(mem['mean_diff'], mem['ci_low'], mem['ci_high'])} "
            f"| {ci(gen['mean_diff'], gen['ci_low'], gen['ci_high'])} "
            f"| {la['mean_diff']:+.3f} | {moon['mean_diff']:+.3f} | {verdict} |"
        )
    (HERE / "RESULTS.md").write_text("\n".join(lines).rstrip("\n") + "\n")
    (HERE / "SUMMARY.md").write_text("\n".join(summary) + "\n")
    if rows:
        table = pd.DataFrame(rows)
        table.to_csv(HERE / "results.csv", index=False, float_format="%.4f")
        plot(table, HERE / "results.png")
    print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'SUMMARY.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
