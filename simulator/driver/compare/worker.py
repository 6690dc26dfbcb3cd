"""One run of a comparison in a driver process of its own: ``python -m
simulator.driver.compare.worker JOB``.

``JOB`` is the JSON file :func:`simulator.driver.api.compare` writes for each run it starts in
parallel: the run's resolved config (whose ``runtime.address`` is the comparison's Ray cluster)
and the folder where the grid's runs share each site's prompt and replay figures. The exit code
is ``smg-sim run``'s; the run folder says why a run failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from simulator.config import Config
from simulator.driver.commands import guarded


def main(argv: list[str] | None = None) -> int:
    """Run the job named by the single argument."""
    from simulator.driver import api

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m simulator.driver.compare.worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    cfg = Config.from_dict(job["config"], source=argv[0])
    reuse = Path(job["reuse"]) if job.get("reuse") else None

    def work() -> int:
        api.run(cfg, progress=False, reuse=reuse)
        return 0

    return guarded(work)


if __name__ == "__main__":
    sys.exit(main())
