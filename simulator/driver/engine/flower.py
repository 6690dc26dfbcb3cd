"""Sites reached through Flower messages: the engine's site handles when it runs inside a ServerApp.

With ``runtime.engine = flower`` the stage loop runs in a Flower ``ServerApp`` and every call it
makes on a site becomes a Flower ``Message`` to that site's SuperNode, answered by the
``ClientApp`` of :mod:`simulator.driver.flower.client`. A :class:`FlowerSite` has the shape of a Ray
actor handle (``site.evaluate.remote(msg)`` returns a reference;
:func:`~simulator.driver.engine.runtime.get`
waits for it), so the engine, its ledger and its recovery code are the same for both engines.

At the start the ServerApp asks every node which site it is (``hello``: its ``partition-id`` in
a simulation, its ``site`` node config in a deployment) and sends each site its spec
(``setup``); the node builds the site there, from the spec. What a site sends back is what its
guarded methods return: the same messages the Ray engine's actors return.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import Message, RecordDict

from simulator.errors import ConfigError, SiteUnavailable
from simulator.flower_calls import CALL, SITE_CALLS, call_message, payload_of
from simulator.payloads import SiteSpec

#: how long the first wait for a reply is, and the longest (seconds; the wait doubles in between)
POLL_SECONDS = 0.005
MAX_POLL_SECONDS = 0.5


class FlowerRef:
    """A message on its way to a site; :meth:`result` waits for the site's reply."""

    def __init__(self, grid: Any, message_id: str, site: str, method: str) -> None:
        self.grid, self.message_id, self.site, self.method = grid, message_id, site, method

    def result(self, timeout: float | None = None) -> RecordDict:
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = POLL_SECONDS
        while True:
            replies = list(self.grid.pull_messages([self.message_id]))
            if replies:
                reply = replies[0]
                if reply.has_error():
                    raise SiteUnavailable(
                        self.site,
                        self.method,
                        f"its node answered with an error: {reply.error.reason}",
                    )
                return payload_of(reply.content)
            if deadline is not None and time.monotonic() > deadline:
                raise SiteUnavailable(
                    self.site,
                    self.method,
                    f"no answer from its node within {timeout:g} s (runtime.site_timeout)",
                )
            time.sleep(
                wait
            )  # quick answers are picked up at once; a long visit is polled every half second
            wait = min(wait * 2, MAX_POLL_SECONDS)


class _FlowerMethod:
    def __init__(self, site: FlowerSite, method: str) -> None:
        self.site, self.method = site, method

    def remote(self, *args: Any) -> FlowerRef:
        payload = args[0] if args and isinstance(args[0], RecordDict) else None
        rest = args[1:] if payload is not None else args
        msg = call_message(self.site.node_id, self.method, self.site.name, payload, rest)
        (mid,) = list(self.site.grid.push_messages([msg]))
        return FlowerRef(self.site.grid, mid, self.site.name, self.method)


class FlowerSite:
    """A site on a Flower node, with the call shape of a Ray actor handle
    (``.method.remote(...)``)."""

    def __init__(self, grid: Any, node_id: int, name: str, pid: int) -> None:
        self.grid, self.node_id, self.name, self.pid = grid, node_id, name, pid

    def __getattr__(self, method: str) -> _FlowerMethod:
        if method not in SITE_CALLS:
            raise AttributeError(
                f"site {self.name!r}: {method!r} is not a call a Flower node answers"
            )
        return _FlowerMethod(self, method)


def _ask(grid: Any, msgs: list[Message], timeout: float, what: str) -> list[Message]:
    """Send one message to each of distinct nodes; their replies, in the order of ``msgs``
    (``send_and_receive`` returns them as they arrive)."""
    dst = [m.metadata.dst_node_id for m in msgs]
    if len(set(dst)) != len(dst):
        raise ValueError(
            f"{what}: one message per node expected, got several for a node among {dst}"
        )
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    if len(replies) < len(msgs):
        raise SiteUnavailable(
            "?",
            what,
            f"{len(msgs) - len(replies)} of {len(msgs)} nodes did not answer within {timeout:g} s",
        )
    bad = [r.error.reason for r in replies if r.has_error()]
    if bad:
        raise SiteUnavailable("?", what, f"a node answered with an error: {bad[0]}")
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


def connect_sites(
    grid: Any,
    names: list[str],
    all_sites: list[str],
    specs: dict[str, SiteSpec],
    setup: dict[str, Any],
    trace_dir: str | None,
    ledger: Any,
    timeout: float,
) -> dict[str, FlowerSite]:
    """Find each site's node, send each its spec, and return a handle per site (in ``names`` order).

    ``all_sites``: the run's sites in partition order (a simulated node with ``partition-id`` i
    is site ``all_sites[i]``); a deployed node names its site in its node config.
    """
    nodes = wait_for_nodes(grid, len(names), timeout)
    hello = _ask(grid, [call_message(n, "hello", "") for n in nodes], timeout, "node discovery")
    where: dict[str, tuple[int, int]] = {}
    for node, reply in zip(nodes, hello, strict=True):
        info = reply.content[CALL]
        site = (
            str(info["site"])
            if info.get("site")
            else (
                all_sites[int(info["partition-id"])]
                if int(info["partition-id"]) < len(all_sites)
                else ""
            )
        )
        if site in where:
            raise ConfigError(
                f"two Flower nodes ({where[site][0]} and {node}) both say they are site {site!r}"
            )
        if site:
            where[site] = (node, int(info["pid"]))
    missing = [s for s in names if s not in where]
    if missing:
        raise ConfigError(
            f"no Flower node is site {', '.join(missing)}; nodes are {', '.join(sorted(where))}"
        )
    msgs = []
    for s in names:
        node = where[s][0]
        spec = specs[s].to_record("driver", f"site:{s}")
        ledger.record(spec, dst=f"site:{s}")
        trace = f"{trace_dir}/site-{s}.jsonl" if trace_dir else ""
        msgs.append(call_message(node, "setup", s, spec, trace=trace, **setup))
    for reply in _ask(grid, msgs, timeout, "setup"):
        ledger.record(payload_of(reply.content))
    return {s: FlowerSite(grid, where[s][0], s, where[s][1]) for s in names}


def placement(sites: dict[str, FlowerSite]) -> dict[str, dict[str, Any]]:
    """Where each site runs: its Flower node and the process that answered its node's messages."""
    return {
        f"site-{n}": {
            "node_id": f"flower:{h.node_id}",
            "node_ip": "",
            "pid": h.pid,
            "state": "ALIVE",
        }
        for n, h in sites.items()
    }


def await_ray(seconds: float = 120.0) -> None:
    """Under ``flwr run`` Flower's simulation starts Ray for its ClientApp workers while the
    ServerApp starts; the learner joins that instance rather than racing it with a second
    ``ray.init``."""
    import ray

    deadline = time.monotonic() + seconds
    while not ray.is_initialized() and time.monotonic() < deadline:
        time.sleep(0.5)
