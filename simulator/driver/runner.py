"""One run's pipeline, from its start or from a checkpoint: engine, stages, results, audit.

:func:`execute` is what ``smg-sim run`` and ``smg-sim resume`` both do once the run is planned:
start (or join) Ray and the actors, build or find the SMD backbone, run the stages with a
checkpoint after each, then write the results, plots, privacy audit and ``metrics.json``.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from simulator.driver.engine.loop import Engine
from simulator.driver.engine.protocol import Backend
from simulator.driver.ledger import Ledger
from simulator.driver.plan import RunPlan
from simulator.driver.processes import record_processes
from simulator.driver.progress import RunProgress
from simulator.driver.results import summary_table, write_metrics, write_results
from simulator.driver.runfolder import RunFolder, write_json
from simulator.driver.smd_phases import check_backbone, finish_smd, prepare_smd
from simulator.errors import ConfigError
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


def write_plan(folder: RunFolder, plan: RunPlan) -> None:
    """The resolved config and the method's resolved hyper-parameters, before any work."""
    plan.config.write(folder.file("config.json"))
    cls = plan.method
    write_json(
        folder.file("method.json"),
        {
            "method": cls.name,
            "private": cls.private,
            "uses_replay": cls.uses_replay,
            "hyperparameters": plan.hparams,
            "description": (cls.__doc__ or "").strip(),
        },
    )


def _start(plan: RunPlan, stream: TextIO, url: str | None) -> None:
    stream.write(f"smg-sim: run folder {plan.out}\n")
    stream.write(f"smg-sim: Ray dashboard {url}\n" if url else "smg-sim: Ray dashboard off\n")
    stream.write(
        f"smg-sim: method {plan.config.run.method}, profile {plan.config.run.profile}, "
        f"order {' -> '.join(plan.order)}\n"
    )


def _image_channels(facts: dict[str, dict[str, float]]) -> int:
    channels = {int(f["channels"]) for f in facts.values()}
    if len(channels) != 1:
        raise ConfigError(f"sites disagree on image channels: {sorted(channels)}")
    return channels.pop()


def _stage_writer(
    folder: RunFolder,
    plan: RunPlan,
    eng,
    ledger: Ledger,
    kept: list[dict],
    R: np.ndarray,
    smd_info: dict,
    t_start: float,
):
    """The callback run after each stage: its line in stages.jsonl (and ``kept``), a progress
    line, then the stage's checkpoint; with ``kill-driver@STAGE`` the process exits right after."""
    from simulator.driver.checkpoint import Checkpoint, write_checkpoint

    T = len(plan.order)

    def on_stage(res) -> None:
        line = {
            "stage": res.stage,
            "site": res.site,
            **res.logs,
            "dice": {s: float(v) for s, v in zip(plan.order, res.row, strict=True)},
        }
        folder.append_stage(line)
        kept.append(line)
        R[res.stage] = res.row
        if res.stage > 0:
            seen = res.row[: res.stage]
            eng.progress.message(
                f"stage {res.stage}/{T} {res.site}: Dice on visited sites {seen.mean():.3f}"
                + (f", on unseen {res.row[res.stage :].mean():.3f}" if res.stage < T else "")
            )
        write_checkpoint(
            folder.path,
            Checkpoint(
                res.stage,
                R,
                eng.snapshot(),
                ledger.offset(),
                ledger.count,
                ledger.bytes,
                folder.file("stages.jsonl").stat().st_size,
                time.perf_counter() - t_start,
                smd_info,
            ),
        )
        if eng.faults.take("kill-driver", res.stage):
            eng.progress.message(
                f"smg-sim: injected fault: the driver exits after stage {res.stage}'s "
                f"checkpoint; continue with: smg-sim resume {folder.path}"
            )
            os._exit(EXIT_DRIVER_KILLED)  # as a crash would: no clean-up, no FAILED marker

    return on_stage


def _formal_words(audit: dict) -> str:
    f = audit["claims"]["formal"]
    return (
        f"eps {f['epsilon']:.3g}, delta {f['delta']:.3g}"
        if f["verdict"] == "bounded"
        else f["verdict"]
    )


def _report(
    stream: TextIO,
    plan: RunPlan,
    R: np.ndarray,
    m: dict[str, float],
    audit: dict,
    timings: dict[str, float],
    folder: RunFolder,
) -> None:
    stream.write(summary_table(R, plan.order, m) + "\n")
    stream.write(
        f"smg-sim: privacy audit {audit['verdict_text']} "
        f"(structural {audit['claims']['structural']['verdict']}, empirical "
        f"{audit['claims']['empirical']['verdict']}, formal DP {_formal_words(audit)}): "
        f"{folder.file('privacy_audit.md')}\n"
    )
    phases = ", ".join(f"{k} {v:.1f}" for k, v in timings["phases"].items() if v >= 0.05)
    stream.write(f"smg-sim: seconds per phase: {phases}\n")
    stream.write(
        f"smg-sim: done in {timings['total_seconds']:.1f} s "
        f"({timings['after_ray_start_seconds']:.1f} s after Ray start); results in {plan.out}\n"
    )


def _open_backend(plan: RunPlan, site_cls: type | None) -> tuple[Backend, str | None]:
    """The backend ``runtime.engine`` names, hosting the plan's sites with the settings the driver
    gives them as their operator; returns it and the Ray dashboard's URL (None when off)."""
    from server.methods import build_method

    token = secrets.token_hex(16)  # the operator's: held in this process only
    extra = {"site_cls": site_cls} if site_cls else {}
    if plan.config.runtime.engine == "inprocess":
        from simulator.driver.engine.inprocess import InProcessBackend

        return InProcessBackend(plan.settings, build_method, token, **extra), None
    from simulator.driver.engine import ray_actors

    url = ray_actors.start_ray(plan.config.runtime)
    backend = ray_actors.RayBackend(
        plan.settings,
        build_method,
        namespace=f"smg-sim-{plan.out.name}",
        token=token,
        restarts=plan.config.runtime.site_restarts,
        pinned=plan.pins,
        **extra,
    )
    return backend, url


def _open_engine(
    plan: RunPlan,
    ledger: Ledger,
    stream: TextIO,
    progress: bool,
    site_cls: type | None,
    t_start: float,
    backend_for: Callable[[Ledger], Backend] | None = None,
) -> tuple[Engine, float]:
    """Start the backend (or take the one ``backend_for`` makes, a ServerApp's Flower nodes) and
    the engine; returns the engine and the time the backend was ready."""
    if backend_for is not None:
        backend, url = backend_for(ledger), None
    else:
        backend, url = _open_backend(plan, site_cls)
    t_ray = time.perf_counter()
    _start(plan, stream, url)
    if backend.name != "ray":
        stream.write(f"smg-sim: engine {backend.name}: {len(plan.order)} sites\n")
    prog = RunProgress(len(plan.order), plan.smd_on, stream=stream, enabled=progress)
    logs = {n: s.log_file for n, s in plan.settings.items()}
    eng = Engine(plan, backend, ledger, prog, logs)
    eng.clock.add("ray_start", t_ray - t_start)
    eng.dashboard_url = url
    return eng, t_ray


def _prepare(
    eng, plan: RunPlan, stream: TextIO, progress: bool, done: frozenset[str] = frozenset()
) -> tuple[dict, dict]:
    """Site facts, the learner, and the SMD backbone when replay is on; returns (facts, smd info).
    ``done``: the sites whose stage a checkpoint holds (they tune no prompt again)."""
    with eng.clock.phase("actors"):
        eng.check_settings()
        facts = eng.describe_sites()
        n_channels = _image_channels(facts)
        eng.start_learner(n_channels)
    smd_info: dict = {}
    if plan.smd_on:
        if n_channels != plan.smd.channels:
            raise ConfigError(
                f"smd.pool: the public pools are single-channel but the sites' images have "
                f"{n_channels} channels; SMD replay needs single-channel data"
            )
        eng.smd.preload(plan.smd.key(), done)
        with eng.clock.phase("smd_pretraining"):
            smd_info = prepare_smd(plan, stream, progress)
            eng.smd.enable(smd_info["backbone_path"], n_channels)
        eng.progress.restart_clock()  # the ETA covers the run, not the pre-training
    return facts, smd_info


def _finish(
    eng,
    plan: RunPlan,
    folder: RunFolder,
    ledger: Ledger,
    R: np.ndarray,
    stage_logs: list[dict],
    t_start: float,
    t_ray: float,
    resumed: tuple[int, float] | None = None,
) -> tuple[dict[str, float], dict, dict]:
    """Results, plots, the privacy audit and metrics.json; returns (metrics, audit, timings)."""
    from simulator.driver.audit.build import build_audit

    t_write = time.perf_counter()
    guard = eng.guard_reports()
    write_results(folder, plan, R, guard, eng.final_weights(), stage_logs)
    audit = build_audit(folder.path)
    t_end = time.perf_counter()
    eng.clock.add("writing", t_end - t_write)
    timings = {
        "after_ray_start_seconds": t_end - t_ray,
        "total_seconds": t_end - t_start,
        "ray_start_seconds": t_ray - t_start,
        "phases": dict(eng.clock.total),
    }
    if resumed is not None:  # the phases and total include the seconds before the run was resumed
        timings["resumed_after_stage"], before = resumed
        timings["total_seconds"] += before
        timings["seconds_before_resume"] = before
    return write_metrics(folder, plan, R, guard, timings, ledger), audit, timings


def execute(
    plan: RunPlan,
    folder: RunFolder,
    stream: TextIO,
    progress: bool,
    site_cls: type | None,
    ckpt,
    backend_for: Callable[[Ledger], Backend] | None = None,
) -> RunResult:
    """The run itself, from the start or from checkpoint ``ckpt``.

    With ``runtime.engine = flower`` it runs inside a Flower ServerApp in Flower's simulation
    (:mod:`simulator.driver.engine.flower_sim`), which calls back here with ``backend_for``: the
    ServerApp's Flower nodes as the backend (given the run's ledger).
    """
    cfg = plan.config
    if cfg.runtime.engine == "flower" and backend_for is None:
        from simulator.driver.engine.flower_sim import execute_in_simulation

        if site_cls is not None:
            raise ConfigError(
                "runtime.engine=flower runs the nodes' own sites; a replaced site "
                "class needs the Ray or in-process engine"
            )
        return execute_in_simulation(plan, folder, stream, progress, ckpt, execute)
    t_start = time.perf_counter()
    before = ckpt.elapsed_seconds if ckpt else 0.0  # seconds the run spent before it was resumed
    ledger = Ledger(
        folder.file("ledger.jsonl"), *((ckpt.ledger_count, ckpt.ledger_total_bytes) if ckpt else ())
    )
    data_root = plan.data_root
    start_trace(plan.trace_dir / "driver.jsonl", "driver", [data_root])
    folder.file("FAILED").unlink(missing_ok=True)
    eng = None
    try:
        eng, t_ray = _open_engine(plan, ledger, stream, progress, site_cls, t_start, backend_for)
        facts, smd_info = _prepare(
            eng,
            plan,
            stream,
            progress,
            frozenset(plan.order[: ckpt.stage]) if ckpt else frozenset(),
        )
        record_processes(folder, eng)
        R = np.zeros((len(plan.order) + 1, len(plan.order)))
        if ckpt is None:
            write_json(
                folder.file("sites.json"),
                {
                    "sites": plan.sites,
                    "order": plan.order,
                    "facts": facts,
                    "data_root": str(data_root),
                },
            )
            stage_logs: list[dict] = []
        else:
            check_backbone(smd_info, ckpt.smd_info)
            eng.restore(ckpt.snapshot)
            eng.progress.skip_to(ckpt.stage)
            R = ckpt.R
            stage_logs = [
                json.loads(line) for line in folder.file("stages.jsonl").read_text().splitlines()
            ]
        on_stage = _stage_writer(
            folder, plan, eng, ledger, stage_logs, R, smd_info, t_start - before
        )
        R = eng.run(on_stage, start=ckpt.stage + 1 if ckpt else 0, R=R)
        if plan.smd_on:
            smd_info.update(finish_smd(plan, eng, folder, eng.progress))
            write_json(folder.file("smd.json"), smd_info)
        if eng.smd.reused:
            reuse = {"folder": str(plan.reuse), "sites": eng.smd.reused}
            write_json(folder.file("reuse.json"), reuse)
        m, audit, timings = _finish(
            eng,
            plan,
            folder,
            ledger,
            R,
            stage_logs,
            t_start,
            t_ray,
            (ckpt.stage, before) if ckpt else None,
        )
        folder.mark_complete()
        _report(stream, plan, R, m, audit, timings, folder)
        return RunResult(plan.out, plan.order, R, m, timings)
    except BaseException as exc:
        folder.mark_failed(exc)
        raise
    finally:
        ledger.close()
        stop_trace()
        if eng is not None:
            eng.progress.close()
            eng.shutdown()
