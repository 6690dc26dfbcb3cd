"""``runtime.engine = flower``: the run inside a Flower ``ServerApp``, in Flower's simulation.

The ServerApp's main function is the same pipeline as the Ray engine's
(:func:`~simulator.driver.runner.execute`), given the ServerApp's ``Grid``: every site call is a
Flower message to the site's SuperNode, answered by the ClientApp of
:mod:`simulator.driver.flower.client`.
Flower's simulation runs the ClientApps in a pool of Ray actors of this run's Ray instance: one
worker holding all of Ray's CPUs, so that the sites' state lives across messages in one process
(the audit's one-process-per-site check reports that it is not met).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TextIO

from simulator.driver.plan import RunPlan
from simulator.driver.runfolder import RunFolder
from simulator.errors import ConfigError


def execute_in_simulation(
    plan: RunPlan,
    folder: RunFolder,
    stream: TextIO,
    progress: bool,
    site_cls: type | None,
    ckpt,
    execute: Callable[..., Any],
):
    """Run the plan as a Flower app in Flower's simulation, one SuperNode per site; ``execute`` is
    the run's pipeline (:func:`simulator.driver.runner.execute`), called with the ServerApp's
    grid."""
    import ray

    from simulator.driver import engine

    cfg = plan.config
    if site_cls is not None:
        raise ConfigError(
            "runtime.engine=flower runs the sites' own ClientApp; a replaced site class needs the "
            "Ray engine"
        )
    if "kill-site" in cfg.runtime.inject_fault:
        raise ConfigError(
            "runtime.inject_fault: kill-site needs the Ray engine (it restarts site actors); "
            "runtime.engine=flower fails the run instead, which can be resumed"
        )
    engine.start_ray(
        cfg.runtime
    )  # Flower's simulation runs its ClientApp workers in this Ray instance
    # (Flower's modules are imported once Ray runs: its processes start with the environment a Ray
    # engine's run gives them)
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from simulator.driver.flower.client import app as client_app

    cpus = int(ray.cluster_resources().get("CPU", 1))
    done: dict = {}
    server = ServerApp()

    @server.main()
    def main(grid, context) -> None:
        try:
            done["result"] = execute(plan, folder, stream, progress, None, ckpt, grid=grid)
        except BaseException as exc:  # re-raised below, in the caller's thread
            done["error"] = exc

    for name in (
        "flwr",
        "flower",
    ):  # Flower's own INFO lines would interleave with the run's progress
        logging.getLogger(name).setLevel(logging.WARNING)
    run_simulation(
        server_app=server,
        client_app=client_app,
        num_supernodes=len(plan.order),
        backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": 0.0}},
    )
    if "error" in done:
        raise done["error"]
    if "result" not in done:
        raise RuntimeError(
            "Flower's simulation ended without running the ServerApp; see its log above"
        )
    return done["result"]
