"""``smg-sim doctor``: does every method run on this machine's device? Run it first on a new
machine.

A 2-site smoke run of every registered method on the device (one Ray instance for them all),
each passing or failing with the code a site said and the log to read (a site's own log, or the
driver's traceback in the run folder), then the seconds per step of every method on the device.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path
from typing import TextIO

from simulator.config import Config, build_config, parse_set
from simulator.errors import SiteFailure


@dataclasses.dataclass
class DoctorRow:
    """One method's smoke run: passed, or the code and the file that says why."""

    method: str
    passed: bool
    seconds: float
    code: str = ""
    log: str = ""


def _smoke(device: str, method: str, out: Path) -> Config:
    sets = [
        "run.sites=2",
        "run.order=fixed",
        f"run.method={method}",
        f"run.out={out}",
        "train.steps_per_stage=3",
        f"runtime.device={device}",
        "runtime.dashboard=false",
        "privacy.allow_non_private=true",
    ]
    return build_config("smoke", parse_set(sets))


def check_methods(device: str, methods: list[str], out: Path, stream: TextIO) -> list[DoctorRow]:
    """A 2-site smoke run of each method on ``device``, each in ``out/<method>``."""
    from simulator.driver import api
    from simulator.driver.engine import ray_actors

    rows = []
    ray_actors.start_ray(_smoke(device, methods[0], out / methods[0]).runtime, dashboard=False)
    for method in methods:
        folder = out / method
        t0 = time.perf_counter()
        log = io.StringIO()  # each run's own lines go to out/<method>.log, not to the terminal
        try:
            api.run(_smoke(device, method, folder), stream=log, progress=False)
            row = DoctorRow(method, True, time.perf_counter() - t0)
        except SiteFailure as exc:
            row = DoctorRow(method, False, time.perf_counter() - t0, exc.code, exc.log)
        except Exception as exc:  # noqa: BLE001 - every failure is a row of the report
            log = folder / "traceback.txt"
            row = DoctorRow(method, False, time.perf_counter() - t0, type(exc).__name__, str(log))
        (out / f"{method}.log").write_text(log.getvalue())
        stream.write(
            f"smg-sim doctor: {method:18s} {'pass' if row.passed else 'FAIL ' + row.code}"
            f"{'' if row.passed else ' (' + row.log + ')'} {row.seconds:.1f} s\n"
        )
        rows.append(row)
    return rows


def doctor(device: str, methods: list[str], out: Path, stream: TextIO) -> dict:
    """Every method's smoke run on ``device``, then each method's seconds per step there."""
    from simulator.driver.bench import step_cost

    t0 = time.perf_counter()
    rows = check_methods(device, methods, out, stream)
    cfg = build_config("smoke", parse_set([f"runtime.device={device}"]))
    steps = step_cost(cfg, methods, [2], steps=3)
    return {
        "device": device,
        "methods": [dataclasses.asdict(r) for r in rows],
        "steps": steps,
        "seconds": time.perf_counter() - t0,
    }
