"""Where a run reports live figures (stage, step, loss, Dice, guard traffic): a metrics sink.

The engine hands the driver a sink backed by Ray's metrics (``ray.util.metrics``, shown by
the Ray dashboard through Prometheus and Grafana); code that runs without Ray gets
:class:`NullSink`. Every figure carries the run's name and, where it is about one site, the
site's name as tags.
"""

from __future__ import annotations

from typing import Protocol


class MetricsSink(Protocol):
    """Receives live figures of a run."""

    def gauge(self, name: str, value: float, **tags: str) -> None:
        """The latest value of ``name`` (stage, step, loss, Dice, seconds per step)."""

    def count(self, name: str, amount: float, **tags: str) -> None:
        """Add ``amount`` to the running total ``name`` (messages, bytes)."""


class NullSink:
    """A sink that drops everything."""

    def gauge(self, name: str, value: float, **tags: str) -> None:
        pass

    def count(self, name: str, amount: float, **tags: str) -> None:
        pass


#: The figures a run reports: name -> (kind, description, tag keys).
FIGURES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "smg_stage": ("gauge", "stage of the run (0: the untrained model's evaluation)", ("run",)),
    "smg_step": ("gauge", "outer step within the current visit", ("run", "site")),
    "smg_loss": ("gauge", "mean training loss of the latest chunk of steps", ("run", "site")),
    "smg_step_seconds": ("gauge", "seconds per outer step of the latest chunk", ("run", "site")),
    "smg_dice": ("gauge", "Dice on the site's test split after the latest stage", ("run", "site")),
    "smg_mem": (
        "gauge",
        "Mem so far: mean Dice on sites visited before the latest stage",
        ("run",),
    ),
    "smg_gen": ("gauge", "Gen so far: mean Dice on sites not yet visited", ("run",)),
    "smg_site_messages": (
        "counter",
        "messages a site sent through its egress guard",
        ("run", "site"),
    ),
    "smg_site_bytes": ("counter", "bytes a site sent through its egress guard", ("run", "site")),
}
