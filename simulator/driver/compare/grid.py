"""Comparisons: many runs (methods x seeds x orders) in one Ray instance, then tables.

``run_compare`` runs what is missing; ``summarize`` is a separate, read-only step
that turns the finished run folders into ``compare.csv``/``compare.md`` (mean +- std
of every metric per method), ``paired.csv`` (paired differences between methods over
(seed, order) cells, also in ``compare.md``), ``runs.csv`` (one row per run) and two plots.

A run's folder name ends in a hash of its resolved settings (:func:`config_hash`), so a
comparison re-run with other settings makes new runs instead of reusing the old ones.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import pandas as pd

from simulator.config import Config, ConfigError
from simulator.driver.compare.schedule import GridEta, next_job, recorded_seconds
from simulator.driver.compare.stats import paired_table
from simulator.driver.plots import plot_comparison
from simulator.driver.runfolder import FAILED, MARKER, is_complete, read_R
from simulator.errors import RunFolderError
from simulator.metrics import METRIC_NAMES, all_metrics
from simulator.provenance import run_code

#: the metrics shown in compare.md's paired table (paired.csv holds all of METRIC_NAMES)
PAIRED_SHOWN = ("Mem", "Gen", "LA")


def config_hash(cfg: Config) -> str:
    """Eight hex digits identifying the settings a run's result depends on, besides seed and order.

    Covers the profile, method, number of sites, the data, model, train, smd and privacy
    sections and the method's own hyper-parameters; not the seed, order, output folder or
    runtime (processes, threads, device), which a comparison varies or which do not change
    what is computed.
    """
    method = cfg.run.method
    train = dataclasses.asdict(cfg.train)
    if not train["replay_resolution_match"]:  # hashes of runs without it stay what they were
        del train["replay_resolution_match"]
    settings = {
        "profile": cfg.run.profile,
        "method": method,
        "sites": cfg.run.sites,
        "data": dataclasses.asdict(cfg.data),
        "model": dataclasses.asdict(cfg.model),
        "train": train,
        "smd": dataclasses.asdict(cfg.smd),
        "privacy": dataclasses.asdict(cfg.privacy),
        "methods": cfg.methods.get(method, {}),
    }
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_name(cfg: Config) -> str:
    """The folder name of one run of a comparison: method, seed, order and settings hash."""
    order = cfg.run.order.replace(",", "-")
    return f"{cfg.run.method}-s{cfg.run.seed}-{order}-{config_hash(cfg)}"


def plan_compare(
    base: Config,
    methods: list[str],
    seeds: list[int],
    orders: list[str],
    out: Path,
    make_config: Callable[[Config, str, int, str, Path], Config],
) -> list[tuple[str, Config]]:
    """Every (method, seed, order) run, validated before anything starts, cell by cell.

    Runs are planned one (seed, order) cell at a time, every method of a cell before the next
    cell, so a grid stopped part-way (it can span sessions: finished runs are skipped) leaves
    complete cells that pair. ``make_config`` builds and validates one run's config; the run's
    folder, ``out/runs/<run_name>``, is set afterwards because its name depends on that config.
    """
    if not methods or not seeds or not orders:
        raise ConfigError("compare needs at least one method, one seed and one order")
    plans = []
    for seed in seeds:
        for order in orders:
            for method in methods:
                # the hash leaves out run.out, so a placeholder folder gives the final name
                cfg = make_config(base, method, seed, order, out / "runs" / "unnamed")
                name = run_name(cfg)
                final = dataclasses.replace(
                    cfg, run=dataclasses.replace(cfg.run, out=str(out / "runs" / name))
                )
                plans.append((name, final))
    return plans


def _pending(
    plans: list[tuple[str, Config]], stream: TextIO, grid: GridEta
) -> tuple[list[tuple[int, str, Config]], dict[str, str]]:
    """The planned runs still to do; finished ones are skipped, unfinished folders moved aside."""
    todo, status = [], {}
    for i, (name, cfg) in enumerate(plans, 1):
        folder = Path(cfg.run.out)
        if is_complete(folder):
            stream.write(f"smg-sim compare: [{i}/{len(plans)}] {name}: finished earlier, skipped\n")
            status[name] = "skipped"
            grid.skip(cfg.run.method, recorded_seconds(folder))
            continue
        if folder.exists():
            aside = folder.with_name(f"{folder.name}.unfinished-{dt.datetime.now():%Y%m%d-%H%M%S}")
            folder.rename(aside)
            stream.write(f"smg-sim compare: {name}: unfinished folder moved to {aside.name}\n")
        todo.append((i, name, cfg))
    return todo, status


def _failed_line(name: str, exc_type: str, text: str) -> str:
    text = text.strip()
    last = text.splitlines()[-1] if text else ""
    return f"smg-sim compare: {name}: FAILED ({exc_type}: {last}); continuing with the next run\n"


def run_compare(
    plans: list[tuple[str, Config]], run: Callable[[Config], object], stream: TextIO | None = None
) -> dict[str, str]:
    """Run every planned run that is not finished, one after another, in this process.

    Unfinished folders are moved aside, not deleted. A run that fails is reported and left with
    its ``FAILED`` marker; the others still run, and the next call runs it again. Progress over
    the whole grid (elapsed, runs left, ETA) follows every run. Returns
    ``{name: "ran" | "skipped" | "failed"}``.
    """
    stream = stream or sys.stderr
    grid = GridEta(plans)
    todo, status = _pending(plans, stream, grid)
    for i, name, cfg in todo:
        stream.write(f"smg-sim compare: [{i}/{len(plans)}] {name} ({grid.line()})\n")
        t0 = time.perf_counter()
        try:
            run(cfg)
        except (KeyboardInterrupt, ConfigError):
            raise
        except Exception as exc:  # one broken run must not cost the rest of a long comparison
            stream.write(_failed_line(name, type(exc).__name__, str(exc)))
            status[name] = "failed"
            grid.done(cfg.run.method, time.perf_counter() - t0)
            continue
        grid.done(cfg.run.method, time.perf_counter() - t0)
        status[name] = "ran"
    stream.write(f"smg-sim compare: {grid.line()}\n")
    return status


def run_parallel(
    plans: list[tuple[str, Config]],
    launch: Callable[[str, Config], subprocess.Popen],
    max_parallel: int,
    stream: TextIO | None = None,
    poll_seconds: float = 1.0,
) -> dict[str, str]:
    """Like :func:`run_compare`, with up to ``max_parallel`` runs at once, each in its own process.

    ``launch(name, cfg)`` starts one run's driver process (its exit code 0 means finished).
    The grid's ETA divides the remaining work by ``max_parallel``. The next run to start is
    chosen by :func:`~simulator.driver.compare.schedule.next_job`: seeds apart, cells in plan order,
    a cell's costliest run first.
    """
    stream = stream or sys.stderr
    grid = GridEta(plans, parallel=max_parallel)
    queue, status = _pending(plans, stream, grid)
    running: dict[str, tuple[subprocess.Popen, Config, float]] = {}
    try:
        while queue or running:
            while queue and len(running) < max_parallel:
                i, name, cfg = queue.pop(
                    next_job(queue, {c.run.seed for _, c, _ in running.values()}, grid.cost_of)
                )
                running[name] = (launch(name, cfg), cfg, time.perf_counter())
                stream.write(
                    f"smg-sim compare: [{i}/{len(plans)}] {name} started ({grid.line()})\n"
                )
            time.sleep(poll_seconds)
            for name in [n for n, (proc, _, _) in running.items() if proc.poll() is not None]:
                proc, cfg, t0 = running.pop(name)
                seconds = time.perf_counter() - t0
                grid.done(cfg.run.method, seconds)
                if proc.returncode == 0 and is_complete(Path(cfg.run.out)):
                    status[name] = "ran"
                    stream.write(
                        f"smg-sim compare: {name} finished in {seconds:.0f} s ({grid.line()})\n"
                    )
                else:
                    why = Path(cfg.run.out, FAILED)
                    text = (
                        why.read_text()
                        if why.exists()
                        else f"driver process exited with {proc.returncode}"
                    )
                    status[name] = "failed"
                    stream.write(_failed_line(name, "RunFailed", text))
    finally:
        for proc, _, _ in running.values():  # interrupted: stop what is still running
            proc.terminate()
    stream.write(f"smg-sim compare: {grid.line()}\n")
    return status


def summarize(out: Path, baseline: str | None = None) -> pd.DataFrame:
    """Read every finished run under ``out/runs`` and write the tables and plots (runs read-only).

    ``paired.csv`` and the paired section of ``compare.md`` compare every method with every
    other one, or only with ``baseline`` when given (a ConfigError if no run used it). Runs of
    one method with different settings (config hashes) are refused rather than averaged.
    """
    out = Path(out)
    rows = []
    for folder in sorted((out / "runs").glob("*")):
        if not (folder / MARKER).exists():
            continue
        path = folder / "config.json"
        cfg = Config.from_dict(json.loads(path.read_text()), source=str(path))
        m = json.loads((folder / "metrics.json").read_text())
        if any(k not in m["metrics"] for k in METRIC_NAMES):  # a run older than a metric
            m["metrics"] = {**all_metrics(read_R(folder / "R.csv")[0]), **m["metrics"]}
        rows.append(
            {
                "run": folder.name,
                "method": cfg.run.method,
                "seed": cfg.run.seed,
                "order": cfg.run.order,
                "config": config_hash(cfg),
                "visited": " ".join(m["order"]),
                "code": run_code(folder),
                **{k: m["metrics"][k] for k in METRIC_NAMES},
                "seconds": m.get("timings", {}).get("total_seconds"),
            }
        )
    if not rows:
        raise FileNotFoundError(f"no finished run under {out / 'runs'}")
    runs = pd.DataFrame(rows)
    _check_runs_can_be_paired(runs, out)
    paired = paired_table(runs, list(METRIC_NAMES), baseline)  # checks baseline before writing
    runs.to_csv(out / "runs.csv", index=False, float_format="%.4f")
    paired.to_csv(out / "paired.csv", index=False, float_format="%.4f")
    codes = sorted(runs["code"].unique())
    keys = ["method", "code"] if len(codes) > 1 else ["method"]
    table = _aggregate(runs, keys)
    table.to_csv(out / "compare.csv", index=False, float_format="%.4f")
    lines = _markdown(table, keys)
    if len(codes) > 1:  # results of different code are labelled, never silently pooled
        warning = (
            f"warning: the runs ran {len(codes)} different versions of the code "
            f"({', '.join(codes)}; 'unknown': written before runs recorded it); the tables "
            f"label each, and paired differences pair runs across them"
        )
        print(f"smg-sim: {warning}", file=sys.stderr)
        lines = [f"**{warning}**", "", *lines]
    if runs["order"].nunique() > 1:  # the order moves Gen and Mem more than most methods do
        by_order = _aggregate(runs, ["method", "order"])
        by_order.to_csv(out / "compare_by_order.csv", index=False, float_format="%.4f")
        lines += ["", "By visiting order:", "", *_markdown(by_order, ["method", "order"])]
    lines += ["", *_paired_markdown(paired)]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    plot_comparison(table, out)
    return table


def _check_runs_can_be_paired(runs: pd.DataFrame, out: Path) -> None:
    """Refuse to average runs of one method made with different settings, or one cell twice."""
    hashes = runs.groupby("method", sort=False)["config"].unique()
    for method, found in hashes.items():
        if len(found) > 1:
            raise RunFolderError(
                f"{out / 'runs'}: method {method!r} has runs with different settings (config "
                f"{', '.join(sorted(found))}); move the runs you do not want to compare out of "
                f"that folder or compare into a new one"
            )
    dup = runs[runs.duplicated(["method", "seed", "order"], keep=False)]
    if not dup.empty:
        raise RunFolderError(
            f"{out / 'runs'}: runs {', '.join(dup['run'])} are the same method, seed and order; "
            f"keep one of them (a folder named before run names carried a config hash is a copy)"
        )


def _paired_markdown(paired: pd.DataFrame) -> list[str]:
    """The ``## Paired differences`` section of compare.md (Mem and Gen rows of paired.csv)."""
    lines = [
        "## Paired differences",
        "",
        "Difference = method - baseline on each (seed, order) cell both ran; CI: bootstrap "
        "95 % CI of the mean paired difference; p: exact two-sided sign-test p-value (ties "
        f"dropped). {', '.join(PAIRED_SHOWN)} here; every metric in paired.csv.",
        "",
    ]
    shown = paired[paired["metric"].isin(PAIRED_SHOWN)]
    if shown.empty:
        return [*lines, "no pairs: fewer than two methods share a (seed, order) cell."]
    lines += [
        "| method | baseline | metric | cells | wins | mean diff | 95 % CI | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in shown.iterrows():
        lines.append(
            f"| {r['method']} | {r['baseline']} | {r['metric']} | {int(r['cells'])} | "
            f"{int(r['wins'])} | {r['mean_diff']:+.3f} | "
            f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['p_value']:.3g} |"
        )
    return lines


def _aggregate(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, std and count of every metric per group of ``keys`` (groups in order of appearance)."""
    agg = runs.groupby(keys, sort=False)[list(METRIC_NAMES)].agg(["mean", "std", "count"])
    table = agg.index.to_frame(index=False)
    table["runs"] = agg[(METRIC_NAMES[0], "count")].to_numpy()
    for k in METRIC_NAMES:
        table[f"{k}_mean"] = agg[(k, "mean")].to_numpy()
        table[f"{k}_std"] = agg[(k, "std")].fillna(0.0).to_numpy()
    return table


def _markdown(table: pd.DataFrame, keys: list[str]) -> list[str]:
    lines = [
        "| " + " | ".join(keys) + " | runs | " + " | ".join(METRIC_NAMES) + " |",
        "|---" * (len(METRIC_NAMES) + len(keys) + 1) + "|",
    ]
    for _, r in table.iterrows():

        def cell(k: str, r=r) -> str:
            mean = f"{r[f'{k}_mean']:+.3f}" if k in ("BWT", "FWT") else f"{r[f'{k}_mean']:.3f}"
            return (
                mean if r["runs"] < 2 else f"{mean} ± {r[f'{k}_std']:.3f}"
            )  # no spread from one run

        cells = (
            [str(r[key]) for key in keys] + [str(int(r["runs"]))] + [cell(k) for k in METRIC_NAMES]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines
