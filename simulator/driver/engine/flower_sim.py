"""``runtime.engine = flower``: the run inside a Flower ``ServerApp``, in Flower's simulation.

The ServerApp's main function is the same pipeline as the other engines'
(:func:`~simulator.driver.runner.execute`), given the ServerApp's Flower nodes as its backend:
every site call is a Flower message to the site's SuperNode, answered by the ClientApp of
:mod:`simulator.driver.flower.client`. As the operator of the simulated nodes, the driver first
writes each node's own settings (:func:`write_node_settings`); the nodes read them, the run
never sends them. Flower's simulation runs the ClientApps in a pool of Ray actors of this run's
Ray instance: one worker holding all of Ray's CPUs, so that the sites' state lives across
messages in one process (the audit says isolation is not met).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from simulator.driver.plan import RunPlan
from simulator.driver.runfolder import RunFolder
from sites.settings import SiteSettings, node_settings_folder


def write_node_settings(settings: dict[str, SiteSettings], folder: Path) -> list[Path]:
    """One ``partition-<i>.json`` per site, in catalogue order (a simulated node's partition id
    is its site's place among the run's sites in that order)."""
    names = sorted(settings, key=lambda n: settings[n].spec.site_index)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, name in enumerate(names):
        path = folder / f"partition-{i}.json"
        settings[name].write(path)
        out.append(path)
    return out


def execute_in_simulation(
    plan: RunPlan,
    folder: RunFolder,
    stream: TextIO,
    progress: bool,
    ckpt,
    execute: Callable[..., Any],
):
    """Run the plan as a Flower app in Flower's simulation, one SuperNode per site; ``execute`` is
    the run's pipeline (:func:`simulator.driver.runner.execute`), called with the nodes."""
    from simulator.driver.engine import ray_actors

    cfg = plan.config
    write_node_settings(plan.settings, node_settings_folder())
    # Flower's simulation runs its ClientApp workers in this Ray instance (Flower's modules are
    # imported once Ray runs: its processes start with the environment a Ray engine's run gives)
    ray_actors.start_ray(cfg.runtime)
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from simulator.driver.engine.flower_nodes import FlowerBackend
    from simulator.driver.flower.client import app as client_app

    cpus = ray_actors.cluster_cpus()
    done: dict = {}
    server = ServerApp()
    timeout = cfg.runtime.site_timeout

    @server.main()
    def main(grid, context) -> None:
        def nodes(ledger):
            return FlowerBackend(grid, plan.order, timeout, ledger.record, mode="simulation")

        try:
            done["result"] = execute(plan, folder, stream, progress, None, ckpt, nodes)
        except BaseException as exc:  # re-raised below, in the caller's thread
            done["error"] = exc

    for name in ("flwr", "flower"):  # Flower's INFO lines would interleave with the progress
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
        raise RuntimeError("Flower's simulation ended without running the ServerApp; see its log")
    return done["result"]
