"""The programmatic entry points that the CLI, tests and notebooks all call."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from simulator.benchmarks import catalog
from simulator.config import Config
from simulator.driver.ledger import Ledger
from simulator.driver.plan import (
    RunPlan,
    check_method,
    plan_run,
    run_sites,
    site_indices,
    smd_needed,
)
from simulator.driver.progress import Progress, RunProgress
from simulator.driver.results import summary_table, write_metrics, write_results
from simulator.driver.runfolder import RunFolder, write_json
from simulator.errors import ConfigError, ResumeError
from simulator.filetrace import start_trace, stop_trace

#: the exit code of a driver stopped by ``--inject-fault kill-driver@STAGE``
EXIT_DRIVER_KILLED = 75


@dataclass
class RunResult:
    """What a finished run produced."""

    out: Path
    order: list[str]
    R: np.ndarray
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)


def _pretrain_progress(total: int, stream: TextIO, enabled: bool = True):
    prog = Progress(total_units=total, stream=stream, enabled=enabled)

    def report(step: int, steps: int, loss: float) -> None:
        prog.done = step
        prog.line(f"SMD pre-training (public data only) step {step}/{steps} loss {loss:.4f}")

    return prog, report


def prepare_smd(cfg: Config, channels: int, stream: TextIO, progress: bool) -> dict:
    """Find the cached SMD backbone for this config, or pre-train it on public data."""
    from simulator.devices import resolve_device
    from simulator.smd.pretrain import ensure_backbone, smd_spec

    spec = smd_spec(cfg, channels)
    prog, report = _pretrain_progress(spec.pretrain_steps, stream, progress)
    path, cached = ensure_backbone(spec, str(resolve_device(cfg.runtime.device)), report)
    prog.message(f"smg-sim: SMD backbone {'reused from cache' if cached else 'pre-trained and cached'}: {path}")
    info = json.loads((path.parent / "info.json").read_text())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"backbone_path": str(path), "backbone_cached": cached, "backbone": info, "backbone_sha256": sha}


def finish_smd(cfg: Config, eng, folder: RunFolder, order: list[str], prog: Progress) -> dict:
    """Per-site fidelity (kept by the engine), the attribution test, and a grid of replay samples."""
    from simulator.seeding import derive_seed
    from simulator.smd.pretrain import PUBLIC_POOLS, pool_name

    out: dict = {"sites": dict(eng.smd_sites)}
    if len(order) >= 2:
        prog.line("SMD attribution: every site scores every site's replay")
        make_pool, _ = PUBLIC_POOLS[pool_name(cfg)]
        public, _, _ = make_pool(derive_seed(cfg.smd.public_seed, "attribution-negatives"), 128,
                                 cfg.data.image_size)
        out["attribution"] = eng.attribution(public)
    folder.file("replay_samples.png").write_bytes(eng.replay_grid())
    out["replay"] = eng.replay_stats()
    return out


def _write_plan(folder: RunFolder, plan: RunPlan) -> None:
    """The resolved config and the method's resolved hyper-parameters, before any work."""
    plan.config.write(folder.file("config.json"))
    cls = plan.method
    write_json(folder.file("method.json"), {
        "method": cls.name, "private": cls.private, "uses_replay": cls.uses_replay,
        "hyperparameters": plan.hparams, "description": (cls.__doc__ or "").strip()})


def _start(plan: RunPlan, stream: TextIO, url: str | None) -> None:
    stream.write(f"smg-sim: run folder {plan.out}\n")
    stream.write(f"smg-sim: Ray dashboard {url}\n" if url else "smg-sim: Ray dashboard off\n")
    stream.write(f"smg-sim: method {plan.config.run.method}, profile {plan.config.run.profile}, "
                 f"order {' -> '.join(plan.order)}\n")


def _image_channels(facts: dict[str, dict[str, float]]) -> int:
    channels = {int(f["channels"]) for f in facts.values()}
    if len(channels) != 1:
        raise ConfigError(f"sites disagree on image channels: {sorted(channels)}")
    return channels.pop()


def _stage_writer(folder: RunFolder, plan: RunPlan, eng, ledger: Ledger, kept: list[dict], R: np.ndarray,
                  smd_info: dict, t_start: float):
    """The callback run after each stage: its line in stages.jsonl (and ``kept``), a progress
    line, then the stage's checkpoint; with ``kill-driver@STAGE`` the process exits right after."""
    from simulator.driver.checkpoint import Checkpoint, write_checkpoint

    T = len(plan.order)

    def on_stage(res) -> None:
        line = {"stage": res.stage, "site": res.site, **res.logs,
                "dice": {s: float(v) for s, v in zip(plan.order, res.row, strict=True)}}
        folder.append_stage(line)
        kept.append(line)
        R[res.stage] = res.row
        if res.stage > 0:
            seen = res.row[:res.stage]
            eng.progress.message(f"stage {res.stage}/{T} {res.site}: Dice on visited sites {seen.mean():.3f}"
                                 + (f", on unseen {res.row[res.stage:].mean():.3f}" if res.stage < T else ""))
        write_checkpoint(folder.path, Checkpoint(
            res.stage, R, eng.snapshot(), ledger.offset(), ledger.count, ledger.bytes,
            folder.file("stages.jsonl").stat().st_size, time.perf_counter() - t_start, smd_info))
        if eng.faults.take("kill-driver", res.stage):
            eng.progress.message(f"smg-sim: injected fault: the driver exits after stage {res.stage}'s "
                                 f"checkpoint; continue with: smg-sim resume {folder.path}")
            os._exit(EXIT_DRIVER_KILLED)  # as a crash would: no clean-up, no FAILED marker

    return on_stage


def _report(stream: TextIO, plan: RunPlan, R: np.ndarray, m: dict[str, float], audit: dict,
            timings: dict[str, float], folder: RunFolder) -> None:
    stream.write(summary_table(R, plan.order, m) + "\n")
    stream.write(f"smg-sim: privacy audit {audit['verdict'].upper()} "
                 f"(structural {audit['claims']['structural']['verdict']}, empirical "
                 f"{audit['claims']['empirical']['verdict']}, formal DP none): "
                 f"{folder.file('privacy_audit.md')}\n")
    phases = ", ".join(f"{k} {v:.1f}" for k, v in timings["phases"].items() if v >= 0.05)
    stream.write(f"smg-sim: seconds per phase: {phases}\n")
    stream.write(f"smg-sim: done in {timings['total_seconds']:.1f} s "
                 f"({timings['after_ray_start_seconds']:.1f} s after Ray start); results in {plan.out}\n")


def _open_engine(plan: RunPlan, ledger: Ledger, trace_dir: Path, stream: TextIO, progress: bool,
                 site_cls: type | None, t_start: float):
    """Start Ray and the site actors; returns (engine, the time Ray was ready)."""
    from simulator.driver import engine

    cfg = plan.config
    url = engine.start_ray(cfg.runtime)
    t_ray = time.perf_counter()
    _start(plan, stream, url)
    prog = RunProgress(len(plan.order), plan.smd_on, stream=stream, enabled=progress)
    eng = engine.Engine(plan, ledger, prog, namespace=f"smg-sim-{plan.out.name}", trace_dir=str(trace_dir),
                        **({"site_cls": site_cls} if site_cls else {}))
    eng.clock.add("ray_start", t_ray - t_start)
    return eng, t_ray


def _prepare(eng, plan: RunPlan, stream: TextIO, progress: bool) -> tuple[dict, dict]:
    """Site facts, the learner, and the SMD backbone when replay is on; returns (facts, smd info)."""
    with eng.clock.phase("actors"):
        facts = eng.describe_sites()
        n_channels = _image_channels(facts)
        eng.start_learner(n_channels)
    smd_info: dict = {}
    if plan.smd_on:
        with eng.clock.phase("smd_pretraining"):
            smd_info = prepare_smd(plan.config, n_channels, stream, progress)
            eng.enable_replay(smd_info["backbone_path"], n_channels)
        eng.progress.restart_clock()  # the ETA covers the run, not the pre-training
    return facts, smd_info


def _finish(eng, plan: RunPlan, folder: RunFolder, ledger: Ledger, R: np.ndarray, stage_logs: list[dict],
            t_start: float, t_ray: float, resumed: tuple[int, float] | None = None
            ) -> tuple[dict[str, float], dict, dict]:
    """Results, plots, the privacy audit and metrics.json; returns (metrics, audit, timings)."""
    from simulator.driver.audit import build_audit

    t_write = time.perf_counter()
    guard = eng.guard_reports()
    write_results(folder, plan, R, guard, eng.final_weights(), stage_logs)
    audit = build_audit(folder.path)
    t_end = time.perf_counter()
    eng.clock.add("writing", t_end - t_write)
    timings = {"after_ray_start_seconds": t_end - t_ray, "total_seconds": t_end - t_start,
               "ray_start_seconds": t_ray - t_start, "phases": dict(eng.clock.total)}
    if resumed is not None:  # the phases and total include the seconds before the run was resumed
        timings["resumed_after_stage"], before = resumed
        timings["total_seconds"] += before
        timings["seconds_before_resume"] = before
    return write_metrics(folder, plan, R, guard, timings, ledger), audit, timings


def run(cfg: Config, stream: TextIO | None = None, progress: bool = True, site_cls: type | None = None,
        reuse: Path | None = None) -> RunResult:
    """Run one sequential-learning simulation and write its run folder (checkpointed every stage).

    ``site_cls`` replaces the site class (tests use it to run deliberately leaking sites).
    ``reuse``: a folder where the runs of a comparison share each site's prompt and replay figures.
    """
    plan = plan_run(cfg, reuse)
    folder = RunFolder(plan.out)
    _write_plan(folder, plan)
    return _execute(plan, folder, stream or sys.stderr, progress, site_cls, None)


def resume(run_dir: Path, stream: TextIO | None = None, progress: bool = True) -> RunResult:
    """Continue an unfinished run from its last checkpoint; the results are those of a run that
    never stopped. Refused for a finished run, one without a checkpoint, or one whose settings
    the current code resolves differently (the keys are named)."""
    from simulator.driver.checkpoint import cut_logs
    from simulator.driver.resume import check_resumable

    cfg, ckpt, reuse = check_resumable(Path(run_dir))
    plan = plan_run(cfg, reuse, new_folder=False)
    folder = RunFolder.existing(plan.out)
    marked = cut_logs(folder.path, ckpt)
    stream = stream or sys.stderr
    stream.write(f"smg-sim: resuming {folder.path} after stage {ckpt.stage}"
                 + (f" ({marked} ledger lines of the interrupted stage marked as retries)" if marked else "") + "\n")
    return _execute(plan, folder, stream, progress, None, ckpt)


def _execute(plan: RunPlan, folder: RunFolder, stream: TextIO, progress: bool, site_cls: type | None,
             ckpt) -> RunResult:
    """The run itself, from the start or from checkpoint ``ckpt``."""
    cfg = plan.config
    t_start = time.perf_counter()
    before = ckpt.elapsed_seconds if ckpt else 0.0  # seconds the run spent before it was resumed
    ledger = Ledger(folder.file("ledger.jsonl"), *((ckpt.ledger_count, ckpt.ledger_total_bytes) if ckpt else ()))
    trace_dir = folder.file("file_access")
    data_root = catalog.data_root(cfg.data.benchmark)
    start_trace(trace_dir / "driver.jsonl", "driver", [data_root])
    folder.file("FAILED").unlink(missing_ok=True)
    eng = None
    try:
        eng, t_ray = _open_engine(plan, ledger, trace_dir, stream, progress, site_cls, t_start)
        facts, smd_info = _prepare(eng, plan, stream, progress)
        R = np.zeros((len(plan.order) + 1, len(plan.order)))
        if ckpt is None:
            write_json(folder.file("sites.json"), {"sites": plan.sites, "order": plan.order, "facts": facts,
                                                   "data_root": str(data_root)})
            stage_logs: list[dict] = []
        else:
            _check_backbone(smd_info, ckpt.smd_info)
            eng.restore(ckpt.snapshot)
            eng.progress.skip_to(ckpt.stage)
            R = ckpt.R
            stage_logs = [json.loads(line) for line in folder.file("stages.jsonl").read_text().splitlines()]
        on_stage = _stage_writer(folder, plan, eng, ledger, stage_logs, R, smd_info, t_start - before)
        R = eng.run(on_stage, start=ckpt.stage + 1 if ckpt else 0, R=R)
        if plan.smd_on:
            smd_info.update(finish_smd(cfg, eng, folder, plan.order, eng.progress))
            write_json(folder.file("smd.json"), smd_info)
        if eng.reused:
            write_json(folder.file("reuse.json"), {"folder": str(plan.reuse), "sites": eng.reused})
        m, audit, timings = _finish(eng, plan, folder, ledger, R, stage_logs, t_start, t_ray,
                                    (ckpt.stage, before) if ckpt else None)
        folder.mark_complete()
        _report(stream, plan, R, m, audit, timings, folder)
        return RunResult(plan.out, plan.order, R, m, timings)
    except BaseException as exc:
        folder.mark_failed(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        ledger.close()
        stop_trace()
        if eng is not None:
            eng.shutdown()


def _check_backbone(now: dict, then: dict) -> None:
    """A resumed run must replay from the very backbone it started with."""
    if now.get("backbone_sha256") != then.get("backbone_sha256"):
        raise ResumeError(f"the SMD backbone differs from the one the run started with "
                          f"({then.get('backbone_path')}, sha256 {str(then.get('backbone_sha256'))[:12]}...); "
                          f"the run cannot be resumed")


def write_site_previews(cfg: Config, folder: Path) -> list[Path]:
    """Have every site of ``cfg`` save a preview of its data (one PNG per site) into ``folder``."""
    from simulator.driver import engine

    sites = run_sites(cfg)
    engine.start_ray(cfg.runtime, dashboard=False)
    folder = Path(folder).resolve()
    engine.write_previews(cfg, sites, site_indices(cfg, sites), str(folder))
    return [folder / f"{n}.png" for n in sites]


def inspect_data(cfg: Config) -> dict[str, tuple[dict, list[str]]]:
    """Per site of ``cfg``: statistics of its data and the problems its reader found.

    The readers run inside one actor per site; only scalars and short messages come back.
    """
    from simulator.driver import engine

    sites = run_sites(cfg)
    engine.start_ray(cfg.runtime, dashboard=False)
    return engine.inspect_sites(cfg, sites, site_indices(cfg, sites))


def pretrain_backbone(cfg: Config, stream: TextIO | None = None, force: bool = False) -> dict:
    """Build (or find) the SMD backbone of ``cfg`` explicitly; returns its cache info."""
    from simulator.devices import resolve_device
    from simulator.smd.pretrain import ensure_backbone, smd_spec

    spec = smd_spec(cfg, 1)
    _, report = _pretrain_progress(spec.pretrain_steps, stream or sys.stderr)
    path, cached = ensure_backbone(spec, str(resolve_device(cfg.runtime.device)), report, force=force)
    info = json.loads((path.parent / "info.json").read_text())
    return {"path": str(path), "cached": cached, **info}


def _pretrain_backbones(plans: list[tuple[str, Config]], stream: TextIO) -> None:
    """Every SMD backbone the grid's replay runs need, built once here before parallel runs start."""
    from simulator.devices import resolve_device
    from simulator.smd.pretrain import ensure_backbone, smd_spec

    specs = {}
    for _, cfg in plans:
        if smd_needed(cfg):
            spec = smd_spec(cfg, 1)  # the public pools are single-channel; other data fail in the run
            specs[spec.key()] = (spec, cfg)
    for spec, cfg in specs.values():
        _, report = _pretrain_progress(spec.pretrain_steps, stream)
        ensure_backbone(spec, str(resolve_device(cfg.runtime.device)), report)


def _launcher(out: Path, shared: Path, address: str, threads: int):
    """Starts one run of a parallel comparison: a job file and a driver process with its own log."""
    import dataclasses
    import subprocess

    from simulator.driver.worker import write_job

    def launch(name: str, cfg: Config) -> subprocess.Popen:
        runtime = dataclasses.replace(cfg.runtime, address=address, torch_threads=threads, dashboard=False)
        job = write_job(out / "jobs" / f"{name}.json", dataclasses.replace(cfg, runtime=runtime), shared)
        log = out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:
            return subprocess.Popen([sys.executable, "-m", "simulator.driver.worker", str(job)],
                                    stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    return launch


def compare(base: Config, methods: list[str], seeds: list[int], orders: list[str], out: Path,
            stream: TextIO | None = None, progress: bool = False, baseline: str | None = None,
            max_parallel: int = 1):
    """Run every (method, seed, order) missing under ``out``, then summarise.

    One run after another in this process, or with ``max_parallel > 1`` that many at once, each in a
    driver process of its own joined to this comparison's Ray instance, ``runtime.torch_threads``
    shared out among them (the SMD backbones are pre-trained here first, once).
    """
    import dataclasses

    from simulator.driver import compare as cmp
    from simulator.driver import engine

    def make(cfg: Config, method: str, seed: int, order: str, folder: Path) -> Config:
        run_cfg = dataclasses.replace(cfg.run, method=method, seed=seed, order=order, out=str(folder))
        new = dataclasses.replace(cfg, run=run_cfg)
        run_sites(new)
        check_method(new, method)
        return new

    stream = stream or sys.stderr
    out = Path(out).resolve()
    plans = cmp.plan_compare(base, methods, seeds, orders, out, make)
    out.mkdir(parents=True, exist_ok=True)
    base.write(out / "compare_config.json")
    engine.start_ray(base.runtime)
    shared = out / "shared"  # each site's prompt and replay figures, made once per (seed, site)
    if max_parallel <= 1:
        status = cmp.run_compare(plans, lambda c: run(c, stream=stream, progress=progress, reuse=shared), stream)
    else:
        _pretrain_backbones(plans, stream)
        threads = max(1, base.runtime.torch_threads // max_parallel)
        launch = _launcher(out, shared, engine.cluster_address(), threads)
        status = cmp.run_parallel(plans, launch, max_parallel, stream)
    table = cmp.summarize(out, baseline=baseline)
    return table, status
