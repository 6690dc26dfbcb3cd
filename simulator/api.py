"""The programmatic entry points that the CLI, tests and notebooks all call."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from server.methods import method_class
from simulator import benchmarks
from simulator.config import Config, ConfigError
from simulator.ledger import Ledger
from simulator.metrics import all_metrics, gen_per_stage, mem_per_stage
from simulator.order import resolve_order, resolve_sites
from simulator.plots import plot_mem_gen, plot_R
from simulator.progress import Progress
from simulator.runfolder import RunFolder, check_new, r_frame, write_json


@dataclass
class RunPlan:
    """A validated run: its config, sites, visiting order and folder; nothing written yet."""

    config: Config
    sites: list[str]
    order: list[str]
    out: Path


@dataclass
class RunResult:
    """What a finished run produced."""

    out: Path
    order: list[str]
    R: np.ndarray
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)


def default_out(cfg: Config) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.run.method}-{cfg.run.profile}-s{cfg.run.seed}"


def plan_run(cfg: Config) -> RunPlan:
    """Validate everything that can be checked before work starts (no side effects)."""
    cls = method_class(cfg.run.method)  # unknown names list the known ones
    if not cls.private and not cfg.privacy.allow_non_private:
        raise ConfigError(f"method {cls.name!r} is a non-private reference: it moves real images out of "
                          "sites; run it only with --allow-non-private (its privacy audit will fail)")
    for name, values in cfg.methods.items():
        known = set(method_class(name).defaults) | {"lr"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"methods.{name}.{unknown[0]}: unknown hyper-parameter; "
                              f"{name} has {', '.join(sorted(known))}")
    if cls.uses_replay and cfg.smd.enabled == "off":
        raise ConfigError(f"smd.enabled: method {cls.name!r} needs SMD replay; use auto or on")
    if cls.uses_replay or cfg.smd.enabled == "on":
        from simulator.smd.pretrain import pool_name

        try:
            pool_name(cfg)
        except ConfigError as exc:
            raise ConfigError(f"method {cls.name!r} needs SMD replay: {exc}") from None
    sites = _sites(cfg)
    order = resolve_order(cfg.run.order, sites, cfg.run.seed)
    out = Path(cfg.run.out) if cfg.run.out else default_out(cfg)
    check_new(out)
    return RunPlan(cfg, sites, order, out)


def prepare_smd(cfg: Config, channels: int, stream: TextIO, progress: bool) -> dict:
    """Find the cached SMD backbone for this config, or pre-train it on public data."""
    from simulator.devices import resolve_device
    from simulator.smd.pretrain import ensure_backbone, smd_spec

    spec = smd_spec(cfg, channels)
    prog = Progress(total_units=spec.pretrain_steps, stream=stream, enabled=progress)

    def report(step: int, total: int, loss: float) -> None:
        prog.done = step
        prog.line(f"SMD pre-training (public data only) step {step}/{total} loss {loss:.4f}")

    path, cached = ensure_backbone(spec, str(resolve_device(cfg.runtime.device)), report)
    prog.message(f"smg-sim: SMD backbone {'reused from cache' if cached else 'pre-trained and cached'}: {path}")
    info = json.loads((path.parent / "info.json").read_text())
    return {"backbone_path": str(path), "backbone_cached": cached, "backbone": info}


def finish_smd(cfg: Config, eng, folder: RunFolder, order: list[str], prog: Progress) -> dict:
    """Per-site fidelity from the stage logs, the attribution test, and a grid of replay samples."""
    from simulator.seeding import derive_seed
    from simulator.smd.pretrain import PUBLIC_POOLS, pool_name

    stages = [json.loads(line) for line in folder.file("stages.jsonl").read_text().splitlines()]
    per_site = {}
    for st in stages:
        if st.get("site"):
            per_site[st["site"]] = {k[4:]: v for k, v in st.items() if k.startswith("smd_")}
    out: dict = {"sites": per_site}
    if len(order) >= 2:
        prog.line("SMD attribution: every site scores every site's replay")
        make_pool, _ = PUBLIC_POOLS[pool_name(cfg)]
        public, _, _ = make_pool(derive_seed(cfg.smd.public_seed, "attribution-negatives"), 128,
                                 cfg.data.image_size)
        out["attribution"] = eng.attribution(public)
    eng.replay_grid(str(folder.file("replay_samples.png")))
    out["replay"] = eng.replay_stats()
    return out


def summary_table(R: np.ndarray, order: list[str], metrics: dict[str, float]) -> str:
    """The table printed at the end of a run."""
    df = r_frame(R, order)
    lines = ["Dice R[stage][site] (sites in visiting order):",
             df.to_string(index=False, float_format=lambda v: f"{v:.3f}"), ""]
    lines.append("  ".join(f"{k} {v:+.3f}" if k in ("BWT", "FWT") else f"{k} {v:.3f}"
                           for k, v in metrics.items()))
    return "\n".join(lines)


def run(cfg: Config, stream: TextIO | None = None, progress: bool = True, site_cls: type | None = None) -> RunResult:
    """Run one sequential-learning simulation and write its run folder.

    ``site_cls`` replaces the site class (tests use it to run deliberately leaking sites).
    """
    from simulator import engine  # Ray is imported only when a run starts

    stream = stream or sys.stderr
    plan = plan_run(cfg)
    folder = RunFolder(plan.out)
    cfg.write(folder.file("config.json"))
    cls = method_class(cfg.run.method)
    write_json(folder.file("method.json"), {
        "method": cls.name, "private": cls.private, "uses_replay": cls.uses_replay,
        "hyperparameters": {**cls.defaults, "lr": cfg.train.lr, **cfg.methods.get(cls.name, {})},
        "description": (cls.__doc__ or "").strip()})
    t_start = time.perf_counter()
    ledger = Ledger(folder.file("ledger.jsonl"))
    from simulator.filetrace import start_trace, stop_trace

    trace_dir = folder.file("file_access")
    data_root = benchmarks.data_root(cfg.data.benchmark)
    start_trace(trace_dir / "driver.jsonl", "driver", [data_root])
    eng = None
    try:
        url = engine.start_ray(cfg.runtime.num_cpus, cfg.runtime.dashboard)
        t_ray = time.perf_counter()
        stream.write(f"smg-sim: run folder {plan.out}\n")
        stream.write(f"smg-sim: Ray dashboard {url}\n" if url else "smg-sim: Ray dashboard off\n")
        stream.write(f"smg-sim: method {cfg.run.method}, profile {cfg.run.profile}, "
                     f"order {' -> '.join(plan.order)}\n")
        T = len(plan.order)
        smd_on = cls.uses_replay or cfg.smd.enabled == "on"
        prog = Progress(total_units=(T + 1) + 3 * T + (2 * T if smd_on else 0), stream=stream,
                        enabled=progress)
        indices = _site_indices(cfg, plan.order)
        guard_mode = cfg.privacy.mode if cls.private else "record"
        eng = engine.Engine(cfg, plan.order, indices, ledger, prog, namespace=f"smg-sim-{plan.out.name}",
                            trace_dir=str(trace_dir), privacy_mode=guard_mode,
                            **({"site_cls": site_cls} if site_cls else {}))
        facts = eng.describe_sites()
        channels = {int(f["channels"]) for f in facts.values()}
        if len(channels) != 1:
            raise ConfigError(f"sites disagree on image channels: {sorted(channels)}")
        n_channels = channels.pop()
        eng.start_learner(n_channels)
        smd_info: dict = {}
        if smd_on:
            smd_info = prepare_smd(cfg, n_channels, stream, progress)
            eng.enable_replay(smd_info["backbone_path"], n_channels)
            prog.t0 = time.perf_counter()  # the ETA covers the run, not the pre-training

        write_json(folder.file("sites.json"), {"sites": plan.sites, "order": plan.order, "facts": facts,
                                               "data_root": str(data_root)})

        def on_stage(stage: int, info: dict, row: np.ndarray) -> None:
            folder.append_stage({"stage": stage, **info,
                                 "dice": {s: float(v) for s, v in zip(plan.order, row, strict=True)}})
            if stage > 0:
                seen = row[:stage]
                prog.message(f"stage {stage}/{T} {info['site']}: Dice on visited sites "
                             f"{seen.mean():.3f}" + (f", on unseen {row[stage:].mean():.3f}" if stage < T else ""))

        R = eng.run(on_stage)
        if smd_on:
            smd_info.update(finish_smd(cfg, eng, folder, plan.order, prog))
            write_json(folder.file("smd.json"), smd_info)
        t_end = time.perf_counter()
        m = all_metrics(R)
        timings = {"after_ray_start_seconds": t_end - t_ray, "total_seconds": t_end - t_start,
                   "ray_start_seconds": t_ray - t_start}
        guard = eng.guard_reports()
        write_json(folder.file("guard.json"), guard)
        folder.write_R(R, plan.order)
        folder.write_weights(eng.final_weights())
        write_json(folder.file("metrics.json"), {
            "metrics": m, "order": plan.order, "mem_per_stage": mem_per_stage(R),
            "gen_per_stage": gen_per_stage(R), "timings": timings,
            "ledger": {"messages": ledger.count, "bytes": ledger.bytes}, "egress_guard": {
                "messages": sum(g["checked_messages"] for g in guard.values()),
                "bytes": sum(g["checked_bytes"] for g in guard.values()),
                "seconds": sum(g["seconds"] for g in guard.values()),
                "build_seconds": sum(g.get("build_seconds", 0.0) for g in guard.values()),
                "violations": sum(g["violations"] for g in guard.values())},
        })
        title = f"{cfg.run.method} ({cfg.run.profile}, seed {cfg.run.seed})"
        plot_R(R, plan.order, folder.file("R.png"), title=f"Dice R: {title}")
        plot_mem_gen(R, folder.file("mem_gen.png"), title=f"Mem/Gen: {title}")
        from simulator.audit import build_audit

        audit = build_audit(folder.path)
        folder.mark_complete()
        stream.write(summary_table(R, plan.order, m) + "\n")
        stream.write(f"smg-sim: privacy audit {audit['verdict'].upper()} "
                     f"(structural {audit['claims']['structural']['verdict']}, empirical "
                     f"{audit['claims']['empirical']['verdict']}, formal DP none): "
                     f"{folder.file('privacy_audit.md')}\n")
        stream.write(f"smg-sim: done in {timings['total_seconds']:.1f} s "
                     f"({timings['after_ray_start_seconds']:.1f} s after Ray start); results in {plan.out}\n")
        return RunResult(plan.out, plan.order, R, m, timings)
    except BaseException as exc:
        folder.mark_failed(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        ledger.close()
        stop_trace()
        if eng is not None:
            eng.shutdown()


def load_run(path: Path) -> RunResult:
    """Load a finished run folder (read-only)."""
    from simulator.runfolder import is_complete, read_R

    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} holds no finished run (no COMPLETE marker)")
    R, order = read_R(path / "R.csv")
    data = json.loads((path / "metrics.json").read_text())
    return RunResult(path, order, R, data["metrics"], data.get("timings", {}))


def _sites(cfg: Config) -> list[str]:
    """The sites of a run of ``cfg``: ``--sites 0`` takes the benchmark's default number."""
    spec = cfg.data.benchmark
    return resolve_sites(cfg.run.order, cfg.run.sites, benchmarks.catalog(spec), benchmarks.default_sites(spec))


def _site_indices(cfg: Config, names: list[str]) -> dict[str, int]:
    """Each site's position in its benchmark's catalogue (it picks, e.g., a generated site's scanner)."""
    catalog = benchmarks.catalog(cfg.data.benchmark)
    return {n: catalog.index(n) for n in names}


def write_site_previews(cfg: Config, folder: Path) -> list[Path]:
    """Have every site of ``cfg`` save a preview of its data (one PNG per site) into ``folder``."""
    from simulator import engine

    sites = _sites(cfg)
    engine.start_ray(cfg.runtime.num_cpus, False)
    folder = Path(folder).resolve()
    engine.write_previews(cfg, sites, _site_indices(cfg, sites), str(folder))
    return [folder / f"{n}.png" for n in sites]


def inspect_data(cfg: Config) -> dict[str, tuple[dict, list[str]]]:
    """Per site of ``cfg``: statistics of its data and the problems its reader found.

    The readers run inside one actor per site; only scalars and short messages come back.
    """
    from simulator import engine

    sites = _sites(cfg)
    engine.start_ray(cfg.runtime.num_cpus, False)
    return engine.inspect_sites(cfg, sites, _site_indices(cfg, sites))


def pretrain_backbone(cfg: Config, stream: TextIO | None = None, force: bool = False) -> dict:
    """Build (or find) the SMD backbone of ``cfg`` explicitly; returns its cache info."""
    from simulator.devices import resolve_device
    from simulator.smd.pretrain import ensure_backbone, smd_spec

    stream = stream or sys.stderr
    spec = smd_spec(cfg, 1)
    prog = Progress(total_units=spec.pretrain_steps, stream=stream)

    def report(step: int, total: int, loss: float) -> None:
        prog.done = step
        prog.line(f"SMD pre-training (public data only) step {step}/{total} loss {loss:.4f}")

    path, cached = ensure_backbone(spec, str(resolve_device(cfg.runtime.device)), report, force=force)
    info = json.loads((path.parent / "info.json").read_text())
    return {"path": str(path), "cached": cached, **info}


def compare(base: Config, methods: list[str], seeds: list[int], orders: list[str], out: Path,
            stream: TextIO | None = None, progress: bool = False):
    """Run every (method, seed, order) missing under ``out`` in one Ray instance, then summarise."""
    import dataclasses

    from simulator import compare as cmp
    from simulator import engine

    def make(cfg: Config, method: str, seed: int, order: str, folder: Path) -> Config:
        run = dataclasses.replace(cfg.run, method=method, seed=seed, order=order, out=str(folder))
        new = dataclasses.replace(cfg, run=run)
        _sites(new)
        cls = method_class(method)
        if not cls.private and not cfg.privacy.allow_non_private:
            raise ConfigError(f"method {method!r} is a non-private reference; add --allow-non-private")
        return new

    out = Path(out)
    plans = cmp.plan_compare(base, methods, seeds, orders, out, make)
    out.mkdir(parents=True, exist_ok=True)
    base.write(out / "compare_config.json")
    engine.start_ray(base.runtime.num_cpus, base.runtime.dashboard)
    status = cmp.run_compare(plans, lambda c: run(c, stream=stream, progress=progress), stream)
    table = cmp.summarize(out)
    return table, status
