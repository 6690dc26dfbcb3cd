"""The Flower ``ClientApp``: a hospital site on a Flower SuperNode.

Every message names one of the site's public, guarded methods (:data:`SITE_CALLS`) and carries
its payload; the app calls that method of the same :class:`~sites.site.Site` class the Ray
engine runs as an actor, so what leaves the node is what the site's egress guard let out. Two
calls are the app's own: ``hello`` (which site this node is: its ``site`` node config in a
deployment, its ``partition-id`` in a simulation) and ``setup`` (build the site from the spec
the server sends; the data is then built on the node, from the spec or from the node's own
data folder). Nothing derived from the site's pixels is put in ``Context.state``.

The sites live in this process (:data:`_SITES`) across messages. In a deployment each
SuperNode runs its ClientApp in its own process, one site each; Flower's simulation pools its
ClientApp workers, so there one process may serve several sites (the run's audit says so).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from simulator.driver.engine.flower import CALL, SITE_CALLS
from simulator.filetrace import start_trace
from simulator.payloads import SiteSpec

#: the sites this process serves, by name, with the trace file and data folder of each
_SITES: dict[str, tuple[object, str, str]] = {}

app = ClientApp()


def _reply(msg: Message, content: RecordDict, **info: object) -> Message:
    if info:
        content[CALL] = ConfigRecord({k: v for k, v in info.items()})
    return Message(content=content, reply_to=msg)


def _hello(msg: Message, context: Context) -> Message:
    cfg = context.node_config
    site = str(cfg.get("site", "")) if "site" in cfg else ""
    return _reply(msg, RecordDict(), site=site, pid=os.getpid(),
                  **({"partition-id": int(cfg["partition-id"])} if "partition-id" in cfg else {}))


def _setup(msg: Message, call: ConfigRecord) -> Message:
    from server.methods import build_method
    from sites.site import Site

    name = str(call["site"])
    spec = SiteSpec.from_record(RecordDict({k: v for k, v in msg.content.items() if k != CALL}))
    if spec.site != name:
        raise ValueError(f"setup for site {name!r} carries the spec of site {spec.site!r}")
    trace = str(call.get("trace", ""))
    site = Site(name, spec, build_method, int(call["torch_threads"]), str(call["device"]),
                str(call["privacy_mode"]), trace or None)
    root = str(Path(spec.data_dir).parent) if spec.data_dir else ""
    _SITES[name] = (site, trace, root)
    return _reply(msg, site.ping())


def _handle(msg: Message, context: Context) -> Message:
    call = msg.content[CALL]
    method = str(call["method"])
    if method == "hello":
        return _hello(msg, context)
    if method == "setup":
        return _setup(msg, call)
    if method not in SITE_CALLS:  # nothing but the site's guarded public methods can be reached
        raise ValueError(f"{method!r} is not a site call; expected one of {', '.join(sorted(SITE_CALLS))}")
    name = str(call["site"])
    if name not in _SITES:
        raise ValueError(f"site {name!r} was not set up in this process (pid {os.getpid()})")
    site, trace, root = _SITES[name]
    if trace and root:  # this process's file access is this site's while it answers this message
        start_trace(trace, f"site:{name}", [root])
    payload = RecordDict({k: v for k, v in msg.content.items() if k != CALL})
    args = json.loads(str(call["args"]))
    out = getattr(site, method)(*([payload] if len(payload) else []), *args)
    return _reply(msg, out)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """A visit: start, train a chunk of steps, finish (or all three in one)."""
    return _handle(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Dice of the learner's weights on the site's test split."""
    return _handle(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Everything else: node discovery, setup, facts, prompt tuning, fidelity, attribution, guard report."""
    return _handle(msg, context)
