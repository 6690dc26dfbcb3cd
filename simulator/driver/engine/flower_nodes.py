"""The Flower backend: every site on a Flower SuperNode, reached by Flower messages.

With ``runtime.engine = flower`` (and under ``flwr run``) the run's pipeline runs in a Flower
``ServerApp``: every operation the stage loop asks of a site becomes a Flower ``Message`` to that
site's node, answered by the ``ClientApp`` of :mod:`simulator.driver.flower.client` through the
site's entry point. The learner lives in the ServerApp's own process, as a ServerApp's state
does.

At the start the ServerApp names the run's sites to every node (``hello``) and each node answers
with the index of the site it serves, read from its own settings; the settings themselves (data,
guard, trace, DP) are the node's and never travel (the run checks them, see
:meth:`sites.settings.SiteSettings.check`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from flwr.app import Message, RecordDict

from simulator.driver.engine.inprocess import learner_in_process
from simulator.driver.engine.protocol import Backend
from simulator.errors import ConfigError, SiteFailure, SiteUnavailable
from simulator.flower_calls import HELLO, call_message, payload_of
from simulator.payloads import NodeHello, is_error

#: how long the first wait for a reply is, and the longest (seconds; the wait doubles in between)
POLL_SECONDS = 0.005
MAX_POLL_SECONDS = 0.5


class FlowerPending:
    """A message on its way to a site; :meth:`result` waits for the site's reply."""

    def __init__(self, grid: Any, message_id: str, site: str, op: str) -> None:
        self.grid, self.message_id, self.site, self.op = grid, message_id, site, op

    def result(self, timeout: float | None = None) -> RecordDict:
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = POLL_SECONDS
        while True:
            replies = list(self.grid.pull_messages([self.message_id]))
            if replies:
                if replies[0].has_error():  # the ClientApp answers failures itself: Flower's own
                    raise SiteFailure(self.site, self.op, "internal")
                return payload_of(replies[0].content)
            if deadline is not None and time.monotonic() > deadline:
                raise SiteUnavailable(
                    self.site,
                    self.op,
                    f"no answer from its node within {timeout:g} s (runtime.site_timeout)",
                )
            time.sleep(wait)  # quick answers are picked up at once; a long visit every 0.5 s
            wait = min(wait * 2, MAX_POLL_SECONDS)


class FlowerSite:
    """A site on a Flower node."""

    def __init__(self, grid: Any, node_id: int, name: str, pid: int) -> None:
        self.grid, self.node_id, self.name, self.pid = grid, node_id, name, pid

    def send(self, op: str, payload: RecordDict | None = None) -> FlowerPending:
        (mid,) = list(self.grid.push_messages([call_message(self.node_id, op, payload)]))
        return FlowerPending(self.grid, mid, self.name, op)


def _ask(grid: Any, msgs: list[Message], timeout: float, what: str) -> list[Message]:
    """Send one message to each of distinct nodes; their replies, in the order of ``msgs``."""
    dst = [m.metadata.dst_node_id for m in msgs]
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    if len(replies) < len(msgs) or any(r.has_error() for r in replies):
        missing = len(msgs) - sum(1 for r in replies if not r.has_error())
        raise SiteUnavailable("?", what, f"{missing} of {len(msgs)} nodes gave no answer")
    by_node = {r.metadata.src_node_id: r for r in replies}
    return [by_node[n] for n in dst]


def wait_for_nodes(grid: Any, n: int, timeout: float) -> list[int]:
    """The ids of the federation's nodes once ``n`` have connected."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(int(i) for i in grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.monotonic() > deadline:
            raise ConfigError(
                f"the Flower federation has {len(nodes)} node(s); the run needs one per site ({n})"
            )
        time.sleep(0.5)


class FlowerBackend(Backend):
    """The sites of ``names`` on the nodes of a Flower ``grid``; the learner in this process."""

    name = "flower"
    persistent_sites = False

    def __init__(
        self,
        grid: Any,
        names: list[str],
        timeout: float,
        record: Callable[..., None],
        mode: str = "flwr-run",
    ) -> None:
        """``record``: the ledger's ``record``, for the discovery's messages; ``mode``:
        ``simulation`` (Flower's simulation, whose workers serve several sites) or ``flwr-run``
        (a ServerApp under ``flwr run``: a deployment's nodes, or a simulation federation)."""
        super().__init__()
        self.grid = grid
        self.mode = mode
        nodes = wait_for_nodes(grid, len(names), timeout)
        hello = NodeHello(tuple(names)).to_record("learner", "site:*")
        record(hello)
        replies = _ask(grid, [call_message(n, HELLO, hello) for n in nodes], timeout, "discovery")
        where: dict[str, tuple[int, int]] = {}
        for node, reply in zip(nodes, replies, strict=True):
            content = payload_of(reply.content)
            if is_error(content) or "metrics" not in content.metric_records:
                continue  # a node without settings: its own log says why
            record(content)
            m = content["metrics"]
            i = int(m.get("site_index", len(names)))
            if i >= len(names):
                continue  # a node of another site, or one without settings
            if names[i] in where:
                raise ConfigError(
                    f"two Flower nodes ({where[names[i]][0]} and {node}) both serve site "
                    f"{names[i]!r}"
                )
            where[names[i]] = (node, int(m.get("pid", 0)))
        missing = [s for s in names if s not in where]
        if missing:
            raise ConfigError(
                f"no Flower node serves site {', '.join(missing)} (each node's settings name its "
                f"site); nodes serve {', '.join(sorted(where)) or 'none of the run'}"
            )
        for s in names:
            self.sites[s] = FlowerSite(grid, where[s][0], s, where[s][1])

    def start_learner(self, *args: Any) -> Any:
        self.learner = learner_in_process(*args)
        return self.learner

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "flower_mode": self.mode}

    def placement(self) -> dict[str, dict[str, Any]]:
        """Each site's Flower node and the process that answered its node's messages."""
        out = {
            f"site-{n}": {
                "node_id": f"flower:{h.node_id}",
                "node_ip": "",
                "pid": h.pid,
                "state": "ALIVE",
            }
            for n, h in self.sites.items()
        }
        if self.learner is not None:
            out["learner"] = {
                "node_id": "server",
                "node_ip": "",
                "pid": os.getpid(),
                "state": "ALIVE",
            }
        return out
