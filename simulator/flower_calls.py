"""Flower messages that call a site: the call record, the calls a node answers, and their types.

Shared by the engine's Flower transport (:mod:`simulator.driver.engine.flower`) and the
ClientApp (:mod:`simulator.driver.flower.client`).
"""

from __future__ import annotations

import json
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

#: the record of a Flower message that names the site method to call (and its scalar arguments)
CALL = "smg.call"
#: site methods a message may call, and the Flower message type of each (nothing else is reachable)
SITE_CALLS = {
    "describe": "query",
    "ping": "query",
    "guard_report": "query",
    "crash_during": "query",
    "has_backbone": "query",
    "install_backbone": "query",
    "tune_prompt": "query",
    "fidelity": "query",
    "attribute": "query",
    "write_preview": "query",
    "start_visit": "train",
    "train": "train",
    "finish_visit": "train",
    "visit": "train",
    "evaluate": "evaluate",
}


def call_message(
    node_id: int,
    method: str,
    site: str,
    payload: RecordDict | None = None,
    args: tuple = (),
    **extra: Any,
) -> Message:
    """A Flower message that calls ``method`` of ``site`` on node ``node_id`` with ``payload``."""
    content = RecordDict(dict(payload.items()) if payload is not None else {})
    content[CALL] = ConfigRecord(
        {
            "method": method,
            "site": site,
            "args": json.dumps(list(args)),
            **{k: v for k, v in extra.items()},
        }
    )
    mtype = SITE_CALLS.get(method, "query")
    return Message(content=content, dst_node_id=int(node_id), message_type=mtype)


def payload_of(content: RecordDict) -> RecordDict:
    """A Flower message's content without its call record: the site message it carries."""
    return RecordDict({k: v for k, v in content.items() if k != CALL})
