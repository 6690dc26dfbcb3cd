"""The engine's one protocol: how the stage loop reaches sites and the learner, whatever runs them.

A backend hosts a run's sites and its learner: Ray actors (:mod:`.ray_actors`, the default and
the only module that imports Ray), Flower messages to one SuperNode per site
(:mod:`.flower_nodes`), or plain objects in the driver's own process (:mod:`.inprocess`: fast
tests and debugging; its audit says isolation is not met). The stage loop knows only this
protocol: an operation name and a payload go to a site, a :class:`Pending` reply comes back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

from flwr.app import RecordDict

from simulator.errors import ConfigError


class SiteDied(RuntimeError):
    """The process that served a site died; a backend that restarts sites (Ray) rebuilds it from
    its settings, and the engine repeats the interrupted work from the stage's inputs."""


class Pending(Protocol):
    """A reply on its way."""

    def result(self, timeout: float | None = None) -> Any:
        """The reply; :class:`SiteDied` if the site's process died, and
        :class:`~simulator.errors.SiteUnavailable` after ``timeout`` seconds."""
        ...


class Done:
    """A reply that is already here (an in-process call)."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error

    def result(self, timeout: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class SiteHandle(Protocol):
    """A site as the stage loop sees it: its one entry point."""

    def send(self, op: str, payload: RecordDict | None = None) -> Pending:
        """Ask the site to serve operation ``op`` (a learner's operation)."""
        ...


class LearnerHandle(Protocol):
    """The learner as the stage loop sees it."""

    def call(self, method: str, *args: Any) -> Any:
        """Run one of the learner's methods and wait for its result."""
        ...

    def submit(self, method: str, *args: Any) -> Pending:
        """Start one of the learner's methods; its result comes later."""
        ...


class Backend(ABC):
    """What hosts a run's sites and learner (see the module docstring)."""

    #: the engine's name as ``runtime.engine`` spells it
    name: str = ""
    #: whether a site's process keeps its state from one call to the next (a Flower node may
    #: answer every message in a new process: a visit is then one message, and nothing is
    #: loaded ahead of time)
    persistent_sites: bool = True

    def __init__(self) -> None:
        self.sites: dict[str, SiteHandle] = {}
        self.learner: LearnerHandle | None = None

    @abstractmethod
    def start_learner(self, *args: Any) -> LearnerHandle:
        """Start the learner with the arguments of :class:`server.learner.Learner`."""

    def broadcast(self, op: str, payload: RecordDict, sites: list[str]) -> dict[str, Pending]:
        """The same request to several sites (a backend may send the payload once)."""
        return {s: self.sites[s].send(op, payload) for s in sites}

    def operator(self, site: str, op: str, payload: RecordDict | None = None) -> Pending:
        """One of the operator's operations (fault injection, preview, inspection); only a
        backend whose driver operates the sites holds the token they need."""
        raise ConfigError(f"the {self.name} engine does not operate its sites ({op} on {site})")

    def restarts_sites(self) -> bool:
        """Whether a site whose process died is restarted (its work is then repeated)."""
        return False

    def describe(self) -> dict[str, Any]:
        """What ``runtime.json`` records of the backend (its name; Ray's address for Ray)."""
        return {"engine": self.name}

    def local_node_ip(self) -> str:
        """This machine's address as :meth:`placement` names nodes ("" where it names none)."""
        return ""

    def metrics_sink(self) -> Any:
        """Where the live figures go (the dashboard's metrics for Ray; nowhere otherwise)."""
        return NullSink()

    @abstractmethod
    def placement(self) -> dict[str, dict[str, Any]]:
        """Where each site and the learner run: node and process, as the backend knows it."""

    def shutdown(self) -> None:  # noqa: B027 - a backend that started nothing stops nothing
        """Stop what the backend started."""


class NullSink:
    """Live figures for no one (a backend without a metrics system)."""

    def gauge(self, name: str, value: float, **tags: str) -> None:
        pass

    def count(self, name: str, amount: float, **tags: str) -> None:
        pass

    def close(self) -> None:
        pass
