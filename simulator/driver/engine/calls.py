"""Calls on a run's sites: every message in and reply out recorded in the ledger, error replies
turned into :class:`~simulator.errors.SiteFailure`, time limits, and the repetition of
interrupted work after a site's process died and was restarted."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flwr.app import RecordDict

from simulator.config import RuntimeConfig
from simulator.driver.engine.protocol import Backend, Pending, SiteDied
from simulator.driver.ledger import Ledger
from simulator.driver.progress import Progress
from simulator.errors import SiteFailure, SiteUnavailable
from simulator.payloads import ErrorReply, is_error


class SiteCalls:
    """Routes the run's requests to its sites through ``backend``, recording each crossing."""

    def __init__(
        self,
        backend: Backend,
        ledger: Ledger,
        runtime: RuntimeConfig,
        progress: Progress,
        logs: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.ledger = ledger
        self.runtime = runtime
        self.progress = progress
        #: where each site keeps the details of its failures, as its operator configured it
        self.logs = logs or {}
        #: per site, how often its process died and was restarted
        self.restarts: dict[str, int] = dict.fromkeys(backend.sites, 0)
        #: called with a site's name once its restarted process answers (the run records the
        #: new process of that role)
        self.on_restart: Callable[[str], None] | None = None

    def send(self, site: str, op: str, msg: RecordDict | None = None, retry: int = 0) -> Pending:
        """Send a request (recorded as it leaves); the reply is :meth:`receive`'s."""
        if msg is not None:
            self.ledger.record(msg, dst=f"site:{site}", retry=retry)
        return self.backend.sites[site].send(op, msg)

    def receive(self, site: str, op: str, pending: Pending, retry: int = 0) -> RecordDict:
        """A site's reply (recorded as it arrives); an error reply raises SiteFailure."""
        reply = pending.result(self.runtime.site_timeout)
        self.ledger.record(reply, retry=retry)
        if is_error(reply):
            err = ErrorReply.from_record(reply)
            log = self.logs.get(site, "")
            raise SiteFailure(site, op, err.error, err.rule, err.stopped_kind, log, err.count)
        return reply

    def call(
        self, site: str, op: str, msg: RecordDict | None = None, retry: int = 0, phase: str = ""
    ) -> RecordDict:
        """Call a site's operation and wait for its reply (``retry``: see Ledger)."""
        del phase  # (the backend names the operation in its own errors)
        return self.receive(site, op, self.send(site, op, msg, retry), retry)

    def with_retries(self, site: str, phase: str, work: Callable[[int], Any]) -> Any:
        """``work(attempt)``; when the site's process dies, wait for it to be restarted and repeat
        the work from the stage's inputs (the site rebuilds its data from its settings), up to
        ``runtime.site_restarts`` times."""
        limit = self.runtime.site_restarts if self.backend.restarts_sites() else 0
        attempt = 0
        while True:
            try:
                return work(attempt)
            except SiteDied:
                if attempt >= limit:
                    raise SiteUnavailable(
                        site,
                        phase,
                        f"its process died {attempt + 1} times (runtime.site_restarts = {limit})",
                    ) from None
                attempt += 1
                self.restarts[site] += 1
                self.progress.message(
                    f"smg-sim: site {site} died during its {phase}; it is restarted and "
                    f"the {phase} is repeated from the stage's inputs (retry {attempt})"
                )
                self._await_restart(site, attempt)

    def _await_restart(self, site: str, retry: int) -> None:
        """Wait until the restarted site answers a liveness probe (its data rebuilt)."""
        deadline = time.monotonic() + self.runtime.site_timeout
        while True:
            try:
                self.call(site, "ping", retry=retry)
                if self.on_restart is not None:
                    self.on_restart(site)
                return
            except SiteDied:
                if time.monotonic() > deadline:
                    raise SiteUnavailable(
                        site, "restart", "it did not come back within runtime.site_timeout"
                    ) from None
                time.sleep(0.2)
