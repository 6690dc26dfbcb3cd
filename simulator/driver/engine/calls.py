"""Calls on a run's sites: every message in and reply out recorded in the ledger, time limits,
and the repetition of interrupted work after a site's process died and was restarted."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
from flwr.app import RecordDict

from simulator.config import RuntimeConfig
from simulator.driver.engine.runtime import Actors, get
from simulator.driver.ledger import Ledger
from simulator.driver.progress import Progress
from simulator.errors import SiteUnavailable


class SiteCalls:
    """Routes calls to the sites of one run (``actors``), recording each crossing in ``ledger``."""

    def __init__(
        self, actors: Actors, ledger: Ledger, runtime: RuntimeConfig, progress: Progress
    ) -> None:
        self.actors = actors
        self.ledger = ledger
        self.runtime = runtime
        self.progress = progress
        #: per site, how often its process died and was restarted
        self.restarts: dict[str, int] = dict.fromkeys(actors.sites, 0)

    def call(
        self,
        site: str,
        method: str,
        msg: RecordDict | None = None,
        *args: Any,
        retry: int = 0,
        phase: str = "",
    ) -> RecordDict:
        """Call a site method, recording the message in and the reply out (``retry``: see
        Ledger)."""
        handle = self.actors.sites[site]
        if msg is not None:
            self.ledger.record(msg, dst=f"site:{site}", retry=retry)
            ref = getattr(handle, method).remote(msg, *args)
        else:
            ref = getattr(handle, method).remote(*args)
        reply = self.wait(ref, site, phase or method)
        self.ledger.record(reply, retry=retry)
        return reply

    def wait(self, ref: Any, site: str, phase: str) -> Any:
        """A site's answer, or :class:`SiteUnavailable` if it takes longer than
        ``runtime.site_timeout``."""
        timeout = self.runtime.site_timeout
        try:
            return get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise SiteUnavailable(
                site,
                phase,
                f"no answer within {timeout:g} s (runtime.site_timeout); "
                f"the run folder can be resumed",
            ) from None

    def with_retries(self, site: str, phase: str, work: Callable[[int], Any]) -> Any:
        """``work(attempt)``; when the site's process dies, wait for Ray to restart it and repeat
        the work from the stage's inputs (the site rebuilds its data from its spec), up to
        ``runtime.site_restarts`` times."""
        limit = self.runtime.site_restarts
        attempt = 0
        while True:
            try:
                return work(attempt)
            except ray.exceptions.RayActorError:
                if attempt >= limit:
                    raise SiteUnavailable(
                        site,
                        phase,
                        f"its process died {attempt + 1} times (runtime.site_restarts = {limit})",
                    ) from None
                attempt += 1
                self.restarts[site] += 1
                self.progress.message(
                    f"smg-sim: site {site} died during its {phase}; Ray restarts it and "
                    f"the {phase} is repeated from the stage's inputs (retry {attempt})"
                )
                self._await_restart(site, attempt)

    def _await_restart(self, site: str, retry: int) -> None:
        """Wait until the restarted site answers a liveness probe (its data rebuilt)."""
        deadline = time.monotonic() + self.runtime.site_timeout
        while True:
            try:
                self.call(site, "ping", retry=retry, phase="restart")
                return
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise SiteUnavailable(
                        site, "restart", "it did not come back within runtime.site_timeout"
                    ) from None
                time.sleep(0.2)
