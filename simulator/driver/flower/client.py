"""The Flower ``ClientApp``: a hospital site on a Flower SuperNode.

Every message names one operation of the site's entry point (:meth:`sites.site.Site.handle`) and
carries its payload; what leaves the node is what the site's egress guard let out. The ClientApp
holds no operator's token: the operator's operations cannot be reached through Flower. Its one
call of its own is ``hello``: the ServerApp names the run's sites and the node answers which of
them it serves.

The site is built from the node's own settings (:class:`sites.settings.SiteSettings`): the file
its node config names (``settings``) in a deployment, or ``partition-<id>.json`` in the folder
its operator prepared for Flower's simulation (:func:`sites.settings.node_settings_file`). The
run never sends them; it checks them. Every exception is caught here and answered with an error
code (:class:`~simulator.payloads.ErrorReply`): Flower never sees its text.

A site lives in this process (:data:`_SITES`) across the messages the process answers. Flower's
simulation pools its ClientApp workers, so there one process may serve several sites (the run's
audit says so). A deployed SuperNode starts a ClientApp process for every message: the site is
rebuilt from its settings, and its guard's counts so far travel in ``Context.state``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import traceback
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from simulator import schemas
from simulator.filetrace import set_owner, traced_as
from simulator.flower_calls import CALL, HELLO, payload_of
from simulator.payloads import ErrorReply, MetricsReply, NodeHello
from sites.settings import SiteSettings, node_settings_file

#: the sites this process serves, by settings file
_SITES: dict[str, object] = {}
#: the site's guard counts so far, carried from one ClientApp process to the next
GUARD_STATE = "smg.guard"

app = ClientApp()
_log = logging.getLogger("smg_sim.clientapp")


_NODE: list[tuple[int, int]] = []  # (node pid, this process's pid)


def _node_pid() -> int:
    """The SuperNode process this ClientApp process runs under (a deployment), else this process."""
    if _NODE and _NODE[0][1] == os.getpid():
        return _NODE[0][0]
    pid = _find_node_pid()
    _NODE[:] = [(pid, os.getpid())]
    return pid


def _find_node_pid() -> int:
    import psutil

    for proc in psutil.Process().parents():
        try:
            if any("flower-supernode" in part for part in proc.cmdline()):
                return proc.pid
        except psutil.Error:
            continue
    return os.getpid()


def _settings_path(context: Context) -> Path:
    cfg = context.node_config
    if "settings" in cfg:
        return Path(str(cfg["settings"]))
    return node_settings_file(int(cfg["partition-id"]))


def _site(context: Context):
    """This node's site: kept in this process, or built from the node's own settings."""
    from server.methods import build_method
    from sites.site import Site

    path = _settings_path(context)
    key = f"{path}@{context.run_id}"
    if key not in _SITES:
        own = SiteSettings.read(path)
        # a node's budgets are per Flower run unless its operator named the run
        own = dataclasses.replace(own, run=own.run or f"flower-run-{context.run_id}")
        site = Site(own, build_method)
        if GUARD_STATE in context.state:
            site.restore_guard_counts(dict(context.state[GUARD_STATE]))
        _SITES[key] = site
    return _SITES[key]


def _hello(content: RecordDict, context: Context) -> RecordDict:
    req = NodeHello.from_record(content)
    settings = SiteSettings.read(_settings_path(context))
    index = req.names.index(settings.name) if settings.name in req.names else len(req.names)
    values = {"site_index": index, "pid": _node_pid()}
    rd = MetricsReply(values).to_record(f"site:{settings.name}", "learner")
    # the node's own answer (no site is built for it): its capacity stated like a site's replies
    rd["meta"]["bits"] = round(sum(schemas.NODE_HELLO[k].bits() for k in values), 3)
    return rd


def _handle(msg: Message, context: Context) -> Message:
    try:
        op = str(msg.content[CALL]["op"])
        content = payload_of(msg.content)
        if op == HELLO:
            return Message(content=_hello(content, context), reply_to=msg)
        set_owner(_node_pid())  # this process's lines name the node its role is recorded as
        site = _site(context)
        own = site.settings
        roots = [Path(own.spec.data_dir).parent] if own.spec.data_dir else []
        # a pooled worker of Flower's simulation serves several sites: each op traced as its own
        with traced_as(own.trace_file or None, f"site:{own.name}", roots):
            out = site.handle(op, content if len(content) else None)
        context.state[GUARD_STATE] = MetricRecord(site.guard_counts())
        return Message(content=out, reply_to=msg)
    except Exception as exc:  # the details stay in this node's log; only a code leaves
        _log.error("ClientApp failed: %s", "".join(traceback.format_exception(exc)))
        reply = ErrorReply(error="internal", rule="", stopped_kind="")
        return Message(content=reply.to_record("site:?", "learner"), reply_to=msg)


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
    """Everything else: node discovery, settings check, facts, prompt tuning, fidelity, ..."""
    return _handle(msg, context)
