"""The Ray backend: every site a Ray actor of its own, the learner another; the only Ray importer.

Each site runs in a :class:`SiteActor`, whose only method (besides Ray's own built-ins
``__ray_call__``, ``__ray_ready__`` and ``__ray_terminate__``, which run any code a caller sends
and are out of scope of the trust model) is the site's entry point. The actor is built with
the site's own settings and its operator's token; Ray's log forwarding to the driver is off, so
nothing a site prints reaches the driver either. This module also starts or joins Ray, exports
the run's live figures through Ray's metrics, and says where each actor runs.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import ray
from flwr.app import RecordDict

from server.learner import Learner
from simulator.config import RuntimeConfig
from simulator.driver.engine.protocol import Backend, SiteDied
from simulator.errors import ConfigError, SiteFailure, SiteUnavailable
from simulator.telemetry import FIGURES
from sites.settings import SiteSettings
from sites.site import MethodFactory, Site


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
    # a site's output stays in its own process's log: nothing it prints reaches the driver
    common = {"logging_level": "ERROR", "log_to_driver": False, "configure_logging": True}
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
    """The GCS address of the Ray instance this process is connected to (for other drivers)."""
    return ray.get_runtime_context().gcs_address


def cluster_cpus() -> int:
    """The CPUs of the Ray instance this process is connected to."""
    return int(ray.cluster_resources().get("CPU", 1))


def await_ray(seconds: float = 120.0) -> None:
    """Under ``flwr run`` Flower's simulation starts Ray for its ClientApp workers while the
    ServerApp starts; wait for that instance rather than racing it with a second ``ray.init``."""
    deadline = time.monotonic() + seconds
    while not ray.is_initialized() and time.monotonic() < deadline:
        time.sleep(0.5)


def shutdown_ray() -> None:
    ray.shutdown()


class RayMetricsSink:
    """The run's live figures as ``ray.util.metrics`` gauges and counters (see
    :mod:`simulator.telemetry`), exported by Ray's metrics agent for Prometheus and the dashboard.

    Ray exports a gauge's value once after it is set, so a background thread sets every gauge
    again each ``refresh_seconds`` while the run lives (:meth:`close` stops it).
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
            cls = Gauge if kind == "gauge" else Counter
            self._made[name] = cls(name, description=description, tag_keys=keys)
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


class SiteActor:
    """A site as a Ray actor: its one entry point, and nothing else of it reachable.

    ``site_cls``: :class:`~sites.site.Site`, or a test's replacement (a deliberately leaking site).
    """

    def __init__(
        self,
        settings: SiteSettings,
        method_factory: MethodFactory,
        operator_token: str,
        site_cls: type = Site,
    ) -> None:
        if getattr(self, "_site", None) is not None:  # a second __init__ call through Ray
            raise RuntimeError("a site actor is built once")
        self._site = site_cls(settings, method_factory, operator_token)

    def handle(
        self, op: str, payload: RecordDict | None = None, token: str | None = None
    ) -> RecordDict:
        """The site's entry point (:meth:`sites.site.Site.handle`)."""
        return self._site.handle(op, payload, token)


class RayPending:
    """A site's reply on its way from its actor."""

    def __init__(self, ref: ray.ObjectRef, site: str, op: str) -> None:
        self.ref, self.site, self.op = ref, site, op

    def result(self, timeout: float | None = None) -> RecordDict:
        try:
            return ray.get(self.ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise SiteUnavailable(
                self.site,
                self.op,
                f"no answer within {timeout:g} s (runtime.site_timeout); "
                f"the run folder can be resumed",
            ) from None
        except ray.exceptions.RayActorError:
            raise SiteDied(self.site) from None
        except ray.exceptions.RayTaskError:  # the entry point answers failures itself: a bug
            raise SiteFailure(self.site, self.op, "internal") from None


class RaySite:
    """A site's actor, reached through its entry point."""

    def __init__(self, name: str, actor: Any) -> None:
        self.name, self.actor = name, actor

    def send(self, op: str, payload: Any = None, token: str | None = None) -> RayPending:
        return RayPending(self.actor.handle.remote(op, payload, token), self.name, op)


class RayLearner:
    """The learner's actor."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def call(self, method: str, *args: Any) -> Any:
        return _get(getattr(self.actor, method).remote(*args))

    def submit(self, method: str, *args: Any) -> Any:
        ref = getattr(self.actor, method).remote(*args)

        class _Reply:
            def result(self, timeout: float | None = None) -> Any:
                return _get(ref, timeout)

        return _Reply()


def _get(ref: Any, timeout: float | None = None) -> Any:
    """``ray.get`` of a learner's call, re-raising the learner's exception as its own type (the
    learner is the driver's side: its errors are the driver's)."""
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
            raise cause from None
        raise


class RayBackend(Backend):
    """Sites and the learner as named Ray actors (visible by name in the dashboard)."""

    name = "ray"

    def __init__(
        self,
        settings: dict[str, SiteSettings],
        method_factory: MethodFactory,
        namespace: str,
        token: str,
        restarts: int = 0,
        pinned: dict[str, str] | None = None,
        site_cls: type = Site,
    ) -> None:
        super().__init__()
        self.namespace, self._token = namespace, token
        pinned = pinned or {}
        offered = ray.cluster_resources()
        missing = sorted({r for r in pinned.values() if r not in offered})
        if missing:  # an actor asking for them would wait for ever
            builtin = ("CPU", "GPU", "node:", "memory", "object_store")
            custom = sorted(k for k in offered if not k.startswith(builtin))
            raise ConfigError(
                f"runtime.site_resources: no node of the Ray cluster offers "
                f"{', '.join(missing)}; custom resources offered: {', '.join(custom) or 'none'}"
            )
        remote = ray.remote(SiteActor)
        self._actors: dict[str, Any] = {}
        for name, s in settings.items():
            # a sliver of the node's custom resource: only the node holding the site's data has it
            resources = {pinned[name]: 0.001} if name in pinned else {}
            self._actors[name] = remote.options(
                name=f"site-{name}",
                namespace=namespace,
                num_cpus=0,
                max_restarts=restarts,
                # the engine repeats interrupted work itself, from the stage's inputs
                max_task_retries=0,
                resources=resources,
            ).remote(s, method_factory, token, site_cls)
            self.sites[name] = RaySite(name, self._actors[name])
        self._learner_actor = None

    def start_learner(self, *args: Any) -> RayLearner:
        self._learner_actor = (
            ray.remote(Learner)
            .options(name="learner", namespace=self.namespace, num_cpus=0, max_restarts=0)
            .remote(*args)
        )
        self.learner = RayLearner(self._learner_actor)
        return self.learner

    def broadcast(self, op: str, payload: RecordDict, sites: list[str]) -> dict[str, RayPending]:
        ref = ray.put(payload)  # one copy in the object store for every site
        return {s: self.sites[s].send(op, ref) for s in sites}

    def operator(self, site: str, op: str, payload: RecordDict | None = None) -> RayPending:
        return self.sites[site].send(op, payload, token=self._token)

    def restarts_sites(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "ray_address": cluster_address()}

    def local_node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def metrics_sink(self) -> RayMetricsSink:
        return RayMetricsSink()

    def placement(self) -> dict[str, dict[str, Any]]:
        """Node id, node address and process id of each actor, read from Ray's control store
        (the driver asks Ray, not the actor)."""
        if self.learner is not None:
            self.learner.call("replay_stats")  # the learner's process is up, its pid known
        handles = {f"site-{n}": a for n, a in self._actors.items()}
        if self._learner_actor is not None:
            handles["learner"] = self._learner_actor
        out = {}
        for name, handle in handles.items():
            info = ray._private.state.actors(handle._actor_id.hex())
            addr = info.get("Address") or {}
            out[name] = {
                "node_id": addr.get("NodeID", ""),
                "node_ip": addr.get("IPAddress", ""),
                "pid": info.get("Pid"),
                "state": info.get("State"),
            }
        return out

    def shutdown(self) -> None:
        for handle in [*self._actors.values(), self._learner_actor]:
            if handle is not None:
                ray.kill(handle)
