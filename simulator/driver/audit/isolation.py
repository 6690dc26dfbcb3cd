"""The audit's one-process-per-site check, from the placement the driver recorded
(``actors.json``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def process_isolation(actors: dict[str, Any], engine: str) -> dict[str, Any]:
    """Whether every site ran in a process of its own (per start of the driver), from
    ``actors.json``.

    The Ray engine gives every site its own actor process; Flower's simulation pools its ClientApp
    workers, so there one process serves several sites: the check is then not met, and says so.
    """
    shared = []
    for i, sess in enumerate(actors.get("sessions", [])):
        by_process: dict[tuple[str, Any], list[str]] = defaultdict(list)
        for name, where in sess["actors"].items():
            if name.startswith("site-") and where.get("pid") is not None:
                by_process[(str(where.get("node_ip", "")), where["pid"])].append(
                    name[len("site-") :]
                )
        shared += [
            f"sites {', '.join(sorted(s))} shared process {pid}"
            + (f" (driver start {i})" if i else "")
            for (_, pid), s in by_process.items()
            if len(s) > 1
        ]
    if shared:
        why = (
            " (Flower's simulation pools its ClientApp workers: one worker process answered these "
            "sites' "
            "messages, each site's data traced under its own role)"
            if engine == "flower"
            else ""
        )
        return {"verdict": "not met", "detail": "; ".join(shared) + why}
    return {
        "verdict": "met" if actors.get("sessions") else "not applicable",
        "detail": "every site ran in a process of its own"
        if actors.get("sessions")
        else "no actors.json",
    }
