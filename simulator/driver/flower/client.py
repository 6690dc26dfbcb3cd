"""The Flower ``ClientApp``: a hospital site on a Flower SuperNode.

Every message names one of the site's public, guarded methods (:data:`SITE_CALLS`) and carries
its payload; the app calls that method of the same :class:`~sites.site.Site` class the Ray
engine runs as an actor, so what leaves the node is what the site's egress guard let out. Two
calls are the app's own: ``hello`` (which site this node is: its ``site`` node config in a
deployment, its ``partition-id`` in a simulation) and ``setup`` (build the site from the spec
the server sends; the data is then built on the node, from the spec, in the node's own data
folder where its node config names one: ``data-dir``). Nothing derived from the site's pixels is put
in ``Context.state``.

A site lives in this process (:data:`_SITES`) across the messages the process answers. Flower's
simulation pools its ClientApp workers, so there one process may serve several sites (the
run's audit says so). A deployed SuperNode starts a ClientApp process for every message: the
site is rebuilt there from its spec, kept in ``Context.state`` with the settings and the
guard's counts so far, the only state that travels from one message to the next.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from simulator.filetrace import start_trace
from simulator.flower_calls import CALL, SITE_CALLS, payload_of
from simulator.payloads import SiteSpec
from sites.egress import Violation

#: the sites this process serves, by name, with the trace file and data folder of each
_SITES: dict[str, tuple[object, str, str]] = {}

app = ClientApp()


def _reply(msg: Message, content: RecordDict, **info: object) -> Message:
    if info:
        content[CALL] = ConfigRecord({k: v for k, v in info.items()})
    return Message(content=content, reply_to=msg)


def _node_pid() -> int:
    """The SuperNode process this ClientApp process runs under (a deployment), else this process."""
    import psutil

    for proc in psutil.Process().parents():
        try:
            if any("flower-supernode" in part for part in proc.cmdline()):
                return proc.pid
        except psutil.Error:
            continue
    return os.getpid()


def _hello(msg: Message, context: Context) -> Message:
    cfg = context.node_config
    site = str(cfg.get("site", "")) if "site" in cfg else ""
    return _reply(
        msg,
        RecordDict(),
        site=site,
        pid=_node_pid() if site else os.getpid(),
        **({"partition-id": int(cfg["partition-id"])} if "partition-id" in cfg else {}),
    )


#: what a node keeps about its site in ``Context.state`` (the spec and settings; no pixel, nothing
#: derived from one)
SITE_STATE = "smg.site"
#: the site's guard counts so far, carried from one ClientApp process to the next
GUARD_STATE = "smg.guard"
_COUNTS = ("checked_messages", "checked_bytes", "checked_arrays", "seconds")


def _build(name: str, rec: ConfigRecord):
    from server.methods import build_method
    from sites.site import Site

    spec = SiteSpec(**json.loads(str(rec["spec"])))
    trace = str(rec.get("trace", ""))
    site = Site(
        name,
        spec,
        build_method,
        int(rec["torch_threads"]),
        str(rec["device"]),
        str(rec["privacy_mode"]),
        trace or None,
    )
    site._session = int(
        rec["session"]
    )  # one guard session per site and run, whichever process answers
    root = str(Path(spec.data_dir).parent) if spec.data_dir else ""
    _SITES[name] = (site, trace, root)
    return _SITES[name]


def _setup(msg: Message, call: ConfigRecord, context: Context) -> Message:
    name = str(call["site"])
    spec = SiteSpec.from_record(payload_of(msg.content))
    if spec.site != name:
        raise ValueError(f"setup for site {name!r} carries the spec of site {spec.site!r}")
    node = context.node_config
    if "site" in node and str(node["site"]) != name:
        raise ValueError(f"setup for site {name!r} reached the node of site {node['site']!r}")
    if "data-dir" in node:  # where the site's data lives is the node's to say, not the server's
        spec = dataclasses.replace(spec, data_dir=str(node["data-dir"]))
    context.state[SITE_STATE] = ConfigRecord(
        {
            "site": name,
            "spec": json.dumps(dataclasses.asdict(spec)),
            "trace": str(call.get("trace", "")),
            "torch_threads": int(call["torch_threads"]),
            "device": str(call["device"]),
            "privacy_mode": str(call["privacy_mode"]),
            "session": time.time_ns() // 1000,
        }
    )
    site, _, _ = _build(name, context.state[SITE_STATE])
    out = site.ping()
    _save_guard(site, context)
    return _reply(msg, out)


def _site(name: str, context: Context):
    """This node's site: kept in this process, or rebuilt from the spec in ``Context.state`` (a
    deployed SuperNode starts a ClientApp process per message). Its guard starts from the counts
    the node's state holds, whichever process answered the node's earlier messages."""
    entry = _SITES.get(name)
    if entry is None:
        rec = context.state.get(SITE_STATE) if SITE_STATE in context.state else None
        if rec is None or str(rec["site"]) != name:
            raise ValueError(f"site {name!r} was not set up on this node (process {os.getpid()})")
        entry = _build(name, rec)
    if GUARD_STATE in context.state:
        g, saved = entry[0]._guard, context.state[GUARD_STATE]
        for k in _COUNTS:
            setattr(g, k, type(getattr(g, k))(saved[k]))
        g.violations[:] = [Violation(**v) for v in json.loads(str(saved["violations"]))]
    return entry


def _save_guard(site, context: Context) -> None:
    g = site._guard
    context.state[GUARD_STATE] = ConfigRecord(
        {
            **{k: getattr(g, k) for k in _COUNTS},
            "violations": json.dumps([dataclasses.asdict(v) for v in g.violations]),
        }
    )


def _handle(msg: Message, context: Context) -> Message:
    call = msg.content[CALL]
    method = str(call["method"])
    if method == "hello":
        return _hello(msg, context)
    if method == "setup":
        return _setup(msg, call, context)
    if method not in SITE_CALLS:  # nothing but the site's guarded public methods can be reached
        raise ValueError(
            f"{method!r} is not a site call; expected one of {', '.join(sorted(SITE_CALLS))}"
        )
    name = str(call["site"])
    site, trace, root = _site(name, context)
    if trace and root:  # this process's file access is this site's while it answers this message
        start_trace(trace, f"site:{name}", [root])
    payload = payload_of(msg.content)
    args = json.loads(str(call["args"]))
    out = getattr(site, method)(*([payload] if len(payload) else []), *args)
    _save_guard(site, context)
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
    """Everything else: node discovery, setup, facts, prompt tuning, fidelity, attribution, guard
    report."""
    return _handle(msg, context)
