"""Flower messages that call a site: the call record and the Flower message type of each call.

Shared by the engine's Flower backend (:mod:`simulator.driver.engine.flower_nodes`) and the
ClientApp (:mod:`simulator.driver.flower.client`). A call names one operation of the site's
entry point; the ClientApp's own ``hello`` (which of the run's sites a node is) is the only other.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

#: the record of a Flower message that names the operation to call
CALL = "smg.call"
#: the ClientApp's own call: the ServerApp names the run's sites, the node says which it is
HELLO = "hello"
#: the Flower message type of the operations that are not queries
MESSAGE_TYPES = {
    "start_visit": "train",
    "train": "train",
    "finish_visit": "train",
    "visit": "train",
    "evaluate": "evaluate",
}


def call_message(node_id: int, op: str, payload: RecordDict | None = None) -> Message:
    """A Flower message that asks node ``node_id`` to serve operation ``op`` with ``payload``."""
    content = RecordDict(dict(payload.items()) if payload is not None else {})
    content[CALL] = ConfigRecord({"op": op})
    return Message(
        content=content, dst_node_id=int(node_id), message_type=MESSAGE_TYPES.get(op, "query")
    )


def payload_of(content: RecordDict) -> RecordDict:
    """A Flower message's content without its call record: the site message it carries."""
    return RecordDict({k: v for k, v in content.items() if k != CALL})
