"""The Ray side of the engine: starting or joining Ray, actors, placement, live metrics.

Ray is imported only in this package (:mod:`simulator.driver.engine`). An exception raised
inside an actor reaches the caller as its own type (a :class:`~simulator.errors.DataError`,
an :class:`~simulator.errors.EgressViolation`, ...), not wrapped in Ray's error, so the driver
classifies failures by type.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from server.methods import build_method
from simulator.config import Config, RuntimeConfig
from simulator.errors import ConfigError
from simulator.messages import metrics
from simulator.payloads import InspectReply, SiteSpec
from simulator.telemetry import FIGURES
from sites.site import Site


def get(refs: Any, timeout: float | None = None) -> Any:
    """``ray.get``, re-raising an actor's exception as its own type (Ray wraps it otherwise)."""
    if hasattr(refs, "result") and not isinstance(refs, ray.ObjectRef):  # a Flower message's reply
        return refs.result(timeout)
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
            raise cause from None
        raise


def start_ray(runtime: RuntimeConfig, dashboard: bool | None = None) -> str | None:
    """Start Ray on this machine, join the cluster at ``runtime.address``, or reuse the running
    instance; returns the dashboard URL (None when it is off).

    ``ray.init(address=...)`` takes no resources of its own: joining passes only the address.
    """
    # keep Ray from rewriting CUDA_VISIBLE_DEVICES for CPU-only actors (and its warning)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    dashboard = runtime.dashboard if dashboard is None else dashboard
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return getattr(ctx, "dashboard_url", None) or None
    common = {"logging_level": "ERROR", "log_to_driver": True, "configure_logging": True}
    if runtime.address:
        info = ray.init(address=runtime.address, **common)
    else:
        extra = {"_metrics_export_port": runtime.metrics_port} if runtime.metrics_port else {}
        info = ray.init(
            num_cpus=runtime.num_cpus,
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            **common,
            **extra,
        )
    url = getattr(info, "dashboard_url", None)
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return url if (dashboard or runtime.address) and url else None


def cluster_address() -> str:
    """The GCS address of the Ray instance this process is connected to (for other drivers to
    join)."""
    return ray.get_runtime_context().gcs_address


class RayMetricsSink:
    """The run's live figures as ``ray.util.metrics`` gauges and counters (see
    :mod:`simulator.telemetry`),
    exported by Ray's metrics agent for Prometheus and the dashboard's Grafana panels.

    Ray exports a gauge's value once after it is set, so a background thread sets every gauge
    again each ``refresh_seconds`` while the run lives (:meth:`close` stops it): a scrape at any
    moment of the run sees the latest stage, step, loss and Dice.
    """

    def __init__(self, refresh_seconds: float = 2.0) -> None:
        self._made: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._refresh, args=(refresh_seconds,), daemon=True, name="smg-sim-metrics"
        )
        self._thread.start()

    def _metric(self, name: str) -> Any:
        if name not in self._made:
            from ray.util.metrics import Counter, Gauge

            kind, description, keys = FIGURES[name]
            self._made[name] = (Gauge if kind == "gauge" else Counter)(
                name, description=description, tag_keys=keys
            )
        return self._made[name]

    def gauge(self, name: str, value: float, **tags: str) -> None:
        if value != value:  # nan: nothing to show
            return
        with self._lock:
            self._last[(name, tuple(sorted(tags.items())))] = float(value)
            self._metric(name).set(float(value), tags=tags)

    def count(self, name: str, amount: float, **tags: str) -> None:
        if amount > 0:  # Ray's counters take positive increments only
            with self._lock:
                self._metric(name).inc(float(amount), tags=tags)

    def _refresh(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            with self._lock:
                for (name, tags), value in self._last.items():
                    self._metric(name).set(value, tags=dict(tags))

    def close(self) -> None:
        self._stop.set()


def actor_placement(handles: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Node id, node address and process id of each named actor, read from Ray's control store
    (the driver asks Ray, not the actor)."""
    out = {}
    for name, handle in handles.items():
        if handle is None:
            continue
        info = ray._private.state.actors(handle._actor_id.hex())
        addr = info.get("Address") or {}
        out[name] = {
            "node_id": addr.get("NodeID", ""),
            "node_ip": addr.get("IPAddress", ""),
            "pid": info.get("Pid"),
            "state": info.get("State"),
        }
    return out


@dataclass
class Actors:
    """Handles of one run's actors."""

    sites: dict[str, Any]
    learner: Any | None = None

    def kill(self) -> None:
        for handle in [*self.sites.values(), self.learner]:
            if isinstance(
                handle, ray.actor.ActorHandle
            ):  # (a Flower site's node is not this run's to stop)
                ray.kill(handle)


def create_sites(
    cfg: Config,
    specs: dict[str, SiteSpec],
    namespace: str,
    trace_dir: str | None = None,
    privacy_mode: str | None = None,
    site_cls: type = Site,
    pinned: dict[str, str] | None = None,
) -> Actors:
    """One named Ray actor per site (visible by name in the dashboard); ``pinned``: site ->
    the custom resource of the node that holds its data."""
    remote_site = ray.remote(site_cls)
    pinned = pinned or {}
    offered = ray.cluster_resources()
    missing = sorted({r for r in pinned.values() if r not in offered})
    if missing:  # an actor asking for them would wait for ever
        builtin = ("CPU", "GPU", "node:", "memory", "object_store")
        custom = sorted(k for k in offered if not k.startswith(builtin))
        raise ConfigError(
            f"runtime.site_resources: no node of the Ray cluster offers {', '.join(missing)}; "
            f"custom resources offered: {', '.join(custom) or 'none'}"
        )
    sites = {}
    for name, spec in specs.items():
        trace = str(Path(trace_dir) / f"site-{name}.jsonl") if trace_dir else None
        # a sliver of the node's custom resource: only the node that holds the site's data offers it
        resources = {pinned[name]: 0.001} if name in pinned else {}
        sites[name] = remote_site.options(
            name=f"site-{name}",
            namespace=namespace,
            num_cpus=0,
            max_restarts=cfg.runtime.site_restarts,
            # the engine repeats interrupted work itself, from the stage's inputs
            max_task_retries=0,
            resources=resources,
        ).remote(
            name,
            spec,
            build_method,
            cfg.runtime.torch_threads,
            cfg.runtime.device,
            privacy_mode or cfg.privacy.mode,
            trace,
        )
    return Actors(sites)


def write_previews(
    cfg: Config, specs: dict[str, SiteSpec], folder: str, real: bool, record: Path
) -> dict[str, int]:
    """Each site writes a preview PNG of its own data into ``folder`` (``""``: its own data folder);
    every message goes to ``record/ledger.jsonl`` and every site's file access to
    ``record/file_access``."""
    from simulator.driver.ledger import Ledger
    from simulator.payloads import PreviewRequest

    actors = create_sites(
        cfg,
        specs,
        namespace=f"smg-sim-preview-{os.getpid()}",
        trace_dir=str(record / "file_access"),
    )
    ledger = Ledger(record / "ledger.jsonl")
    try:
        refs = {}
        for n, h in actors.sites.items():
            msg = PreviewRequest(folder, 3, real).to_record("driver", f"site:{n}")
            ledger.record(msg)
            refs[n] = h.write_preview.remote(msg)
        out = {}
        for n, r in refs.items():
            reply = get(r)
            ledger.record(reply)
            out[n] = int(metrics(reply)["bytes_written"])
        return out
    finally:
        ledger.close()
        actors.kill()


def inspect_sites(
    cfg: Config, specs: dict[str, SiteSpec], record: Path
) -> dict[str, tuple[dict, list[str]]]:
    """Each site reads its own data (in its own actor) and returns statistics and problems; every
    reply goes to ``record/ledger.jsonl`` and every site's file access to ``record/file_access``."""
    from simulator.driver.ledger import Ledger
    from sites.inspect import SiteInspector

    remote = ray.remote(SiteInspector)
    handles = {
        n: remote.options(
            name=f"site-{n}", namespace=f"smg-sim-inspect-{os.getpid()}", num_cpus=0, max_restarts=0
        ).remote(
            n,
            spec,
            cfg.privacy.mode,
            str(record / "file_access" / f"site-{n}.jsonl"),
        )
        for n, spec in specs.items()
    }
    ledger = Ledger(record / "ledger.jsonl")
    try:
        refs = {n: h.inspect.remote() for n, h in handles.items()}
        out = {}
        for n, ref in refs.items():
            raw = get(ref)
            ledger.record(raw)
            reply = InspectReply.from_record(raw)
            out[n] = (dict(reply.values), list(reply.problems))
        return out
    finally:
        ledger.close()
        for h in handles.values():
            ray.kill(h)
