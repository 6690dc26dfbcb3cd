"""The engine: the one package that imports Ray.

:mod:`~simulator.driver.engine.runtime` starts or joins Ray (dashboard on 127.0.0.1), creates
actors, records where they run and exports live metrics; :mod:`~simulator.driver.engine.loop`
drives one run's stage loop over its site actors and learner, with recovery from site faults.
"""

from simulator.driver.engine.loop import Engine, StageResult
from simulator.driver.engine.runtime import (
    cluster_address,
    create_sites,
    get,
    inspect_sites,
    start_ray,
    write_previews,
)

__all__ = [
    "Engine",
    "StageResult",
    "cluster_address",
    "create_sites",
    "get",
    "inspect_sites",
    "start_ray",
    "write_previews",
]
