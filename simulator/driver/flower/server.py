"""The Flower ``ServerApp``: the sequential learner, for ``flwr run``.

It reads the run config (``[tool.flwr.app.config]`` in ``pyproject.toml``, or ``flwr run
--run-config``: the keys mirror ``smg-sim run``'s options), plans the run as ``smg-sim run``
does, and runs the same pipeline with the ServerApp's ``Grid``: every site call is a Flower
message to that site's SuperNode (see :mod:`simulator.driver.engine.flower_nodes`), and the run
folder is the one ``smg-sim run`` writes. The run config carries no site's settings: ``privacy``
is the guard mode the run expects of every node, which each node checks against its own (a
weaker one is refused). ``smg-sim run --engine flower`` runs the same app in Flower's
simulation from the usual CLI.
"""

from __future__ import annotations

import sys
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

#: run-config key -> (config section, key); every other key is refused with the keys it may be
RUN_CONFIG = {
    "sites": ("run", "sites"),
    "order": ("run", "order"),
    "method": ("run", "method"),
    "seed": ("run", "seed"),
    "out": ("run", "out"),
    "benchmark": ("data", "benchmark"),
    "privacy": ("privacy", "mode"),
    "exports": ("privacy", "exports"),
    "allow-non-private": ("privacy", "allow_non_private"),
}

app = ServerApp()


def config_from_run_config(run_config: dict[str, Any]):
    """The resolved config of a run from a Flower run config (``profile`` picks the profile)."""
    from simulator.config import build_config
    from simulator.errors import ConfigError

    values = dict(run_config)
    profile = str(values.pop("profile", "quick"))
    bad = sorted(k for k in values if k not in RUN_CONFIG)
    if bad:
        raise ConfigError(
            f"flower run config: unknown key(s) {', '.join(bad)}; expected profile, "
            f"{', '.join(RUN_CONFIG)}"
        )
    overrides: dict[str, dict[str, Any]] = {"runtime": {"engine": "flower"}}
    for key, value in values.items():
        if value == "" and key in ("out", "benchmark"):
            continue  # the profile's default
        section, name = RUN_CONFIG[key]
        overrides.setdefault(section, {})[name] = value
    return build_config(profile, overrides)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Plan the run from the run config and visit the sites through ``grid``."""
    from simulator.driver.engine.flower_nodes import FlowerBackend
    from simulator.driver.plan import plan_run
    from simulator.driver.runfolder import RunFolder
    from simulator.driver.runner import execute, write_plan

    cfg = config_from_run_config(dict(context.run_config))
    plan = plan_run(cfg)
    folder = RunFolder(plan.out)
    write_plan(folder, plan)
    timeout = cfg.runtime.site_timeout
    execute(
        plan,
        folder,
        sys.stderr,
        True,
        None,
        None,
        backend_for=lambda ledger: FlowerBackend(grid, plan.order, timeout, ledger.record),
    )
