"""The programmatic entry points that the CLI, tests and notebooks all call."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from simulator.config import Config
from simulator.driver.operator import inspect_data, write_site_previews
from simulator.driver.plan import check_method, plan_run, run_sites
from simulator.driver.runfolder import RunFolder
from simulator.driver.runner import (
    EXIT_DRIVER_KILLED,
    RunResult,
    execute,
    write_plan,
)
from simulator.driver.smd_phases import pretrain_progress

__all__ = [
    "EXIT_DRIVER_KILLED",
    "RunResult",
    "compare",
    "inspect_data",
    "pretrain_backbone",
    "resume",
    "run",
    "write_site_previews",
]


def run(
    cfg: Config,
    stream: TextIO | None = None,
    progress: bool = True,
    site_cls: type | None = None,
    reuse: Path | None = None,
) -> RunResult:
    """Run one sequential-learning simulation and write its run folder (checkpointed every stage).

    ``site_cls`` replaces the site class (tests use it to run deliberately leaking sites).
    ``reuse``: a folder where the runs of a comparison share each site's prompt and replay figures.
    """
    plan = plan_run(cfg, reuse)
    folder = RunFolder(plan.out)
    write_plan(folder, plan)
    return execute(plan, folder, stream or sys.stderr, progress, site_cls, None)


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
    stream.write(
        f"smg-sim: resuming {folder.path} after stage {ckpt.stage}"
        + (f" ({marked} ledger lines of the interrupted stage marked as retries)" if marked else "")
        + "\n"
    )
    return execute(plan, folder, stream, progress, None, ckpt)


def pretrain_backbone(cfg: Config, stream: TextIO | None = None, force: bool = False) -> dict:
    """Build (or find) the SMD backbone of ``cfg`` explicitly; returns its cache info."""
    from simulator.devices import resolve_device
    from simulator.smd.pretrain import ensure_backbone, smd_spec

    spec = smd_spec(cfg, 1)
    prog, report = pretrain_progress(spec.pretrain_steps, stream or sys.stderr)
    try:
        device = str(resolve_device(cfg.runtime.device))
        path, cached = ensure_backbone(spec, device, report, force=force)
    finally:
        prog.close()
    info = json.loads((path.parent / "info.json").read_text())
    return {"path": str(path), "cached": cached, **info}


def _pretrain_backbones(plans: list[tuple[str, Config]], stream: TextIO) -> None:
    """Every SMD backbone the grid's replay runs need, built once here before parallel runs
    start."""
    from simulator.devices import resolve_device
    from simulator.smd.pretrain import ensure_backbone

    specs = {}
    for _, cfg in plans:
        spec = plan_run(cfg, new_folder=False).smd
        if spec is not None:
            specs[spec.key()] = (spec, cfg)
    for spec, cfg in specs.values():
        prog, report = pretrain_progress(spec.pretrain_steps, stream)
        try:
            ensure_backbone(spec, str(resolve_device(cfg.runtime.device)), report)
        finally:
            prog.close()


def _launcher(out: Path, shared: Path, address: str, threads: int):
    """Starts one run of a parallel comparison: a job file and a driver process with its own log."""
    import dataclasses
    import subprocess

    def launch(name: str, cfg: Config) -> subprocess.Popen:
        runtime = dataclasses.replace(
            cfg.runtime, address=address, torch_threads=threads, dashboard=False
        )
        job = out / "jobs" / f"{name}.json"  # read by simulator.driver.compare.worker
        job.parent.mkdir(parents=True, exist_ok=True)
        job.write_text(
            json.dumps(
                {
                    "config": dataclasses.replace(cfg, runtime=runtime).to_dict(),
                    "reuse": str(shared),
                },
                indent=1,
            )
            + "\n"
        )
        log = out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:
            return subprocess.Popen(
                [sys.executable, "-m", "simulator.driver.compare.worker", str(job)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    return launch


def compare(
    base: Config,
    methods: list[str],
    seeds: list[int],
    orders: list[str],
    out: Path,
    stream: TextIO | None = None,
    progress: bool = False,
    baseline: str | None = None,
    max_parallel: int = 1,
):
    """Run every (method, seed, order) missing under ``out``, then summarise.

    One run after another in this process, or with ``max_parallel > 1`` that many at once, each in a
    driver process of its own joined to this comparison's Ray instance, ``runtime.torch_threads``
    shared out among them (the SMD backbones are pre-trained here first, once).
    """
    import dataclasses

    from simulator.driver.compare import grid as cmp
    from simulator.driver.engine import ray_actors

    def make(cfg: Config, method: str, seed: int, order: str, folder: Path) -> Config:
        run_cfg = dataclasses.replace(
            cfg.run, method=method, seed=seed, order=order, out=str(folder)
        )
        new = dataclasses.replace(cfg, run=run_cfg)
        run_sites(new)
        check_method(new, method)
        return new

    stream = stream or sys.stderr
    out = Path(out).resolve()
    plans = cmp.plan_compare(base, methods, seeds, orders, out, make)
    out.mkdir(parents=True, exist_ok=True)
    base.write(out / "compare_config.json")
    if (
        base.runtime.engine != "inprocess" or max_parallel > 1
    ):  # the runs' engine, or their drivers'
        ray_actors.start_ray(base.runtime)
    shared = out / "shared"  # each site's prompt and replay figures, made once per (seed, site)
    if max_parallel <= 1:
        status = cmp.run_compare(
            plans, lambda c: run(c, stream=stream, progress=progress, reuse=shared), stream
        )
    else:
        _pretrain_backbones(plans, stream)
        threads = max(1, base.runtime.torch_threads // max_parallel)
        launch = _launcher(out, shared, ray_actors.cluster_address(), threads)
        status = cmp.run_parallel(plans, launch, max_parallel, stream)
    table = cmp.summarize(out, baseline=baseline)
    return table, status
