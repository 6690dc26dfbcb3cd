"""The in-process backend: every site and the learner a plain object in the driver's own process.

For fast tests and debugging, never the default. It gives the same results as the other
backends (every site is the same :class:`~sites.site.Site` behind the same entry point, every
message the same record), but no isolation: the audit says so. The file-access trace still
records each site's and the learner's accesses under their own roles and files, by switching
the process's trace while each one works.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flwr.app import RecordDict

from server.learner import Learner
from simulator.driver.engine.protocol import Backend, Done
from simulator.filetrace import traced_as
from sites.settings import SiteSettings
from sites.site import MethodFactory, Site


def _roots(settings: SiteSettings) -> list[str]:
    return [str(Path(settings.spec.data_dir).parent)] if settings.spec.data_dir else []


class InProcessSite:
    """A site object of this process, reached only through its entry point."""

    def __init__(
        self,
        settings: SiteSettings,
        method_factory: MethodFactory,
        token: str,
        site_cls: type = Site,
    ) -> None:
        self.settings = settings
        with self._traced():
            self._site = site_cls(settings, method_factory, token)

    def _traced(self):
        s = self.settings
        return traced_as(s.trace_file or None, f"site:{s.name}", _roots(s))

    def send(self, op: str, payload: RecordDict | None = None, token: str | None = None) -> Done:
        with self._traced():
            return Done(self._site.handle(op, payload, token))


class InProcessLearner:
    """The learner as an object of this process; its file accesses traced as the learner's."""

    def __init__(self, trace_file: str | None, data_root: str | None, *args: Any) -> None:
        self._trace = (trace_file or None, "learner", [data_root] if data_root else [])
        with traced_as(*self._trace):
            self._learner = Learner(*args, trace_file, data_root)

    def call(self, method: str, *args: Any) -> Any:
        with traced_as(*self._trace):
            return getattr(self._learner, method)(*args)

    def submit(self, method: str, *args: Any) -> Done:
        try:
            return Done(self.call(method, *args))
        except Exception as exc:  # raised when the result is asked for, as from another process
            return Done(error=exc)


def learner_in_process(*args: Any) -> InProcessLearner:
    """The learner of :class:`server.learner.Learner`'s arguments (``cfg, method, hparams,
    in_channels, trace_file, data_root``), in this process."""
    *head, trace_file, data_root = args
    return InProcessLearner(trace_file, data_root, *head)


class InProcessBackend(Backend):
    """Sites and the learner in the driver's own process (see the module docstring)."""

    name = "inprocess"

    def __init__(
        self,
        settings: dict[str, SiteSettings],
        method_factory: MethodFactory,
        token: str,
        site_cls: type = Site,
    ) -> None:
        super().__init__()
        self._token = token
        for name, s in settings.items():
            self.sites[name] = InProcessSite(s, method_factory, token, site_cls)

    def start_learner(self, *args: Any) -> InProcessLearner:
        self.learner = learner_in_process(*args)
        return self.learner

    def operator(self, site: str, op: str, payload: RecordDict | None = None) -> Done:
        return self.sites[site].send(op, payload, token=self._token)

    def placement(self) -> dict[str, dict[str, Any]]:
        here = {"node_id": "in-process", "node_ip": "", "pid": os.getpid(), "state": "ALIVE"}
        out = {f"site-{n}": dict(here) for n in self.sites}
        if self.learner is not None:
            out["learner"] = dict(here)
        return out
