"""``smg-sim data inspect``: a site's readers run in the site's own process; statistics leave.

An operator's operation (:class:`sites.operator_ops.OperatorOps`): the problems it finds name
the site's own files, which only its operator sees.
"""

from __future__ import annotations

import numpy as np
from flwr.app import RecordDict

from simulator.payloads import InspectReply, SiteSpec
from simulator.schemas import INSPECT, Schema
from sites.blocklist import Blocklist, WindowIndex
from sites.datasets import inspect_site
from sites.egress import EgressGuard

#: Problems sent back per site (the rest are counted).
MAX_PROBLEMS = 64
MAX_PROBLEM_CHARS = 900


def inspect_reply(name: str, spec: SiteSpec, privacy_mode: str = "strict") -> RecordDict:
    """The site's statistics and problems, read in collect mode; a guard of its own holds the
    images and masks read."""
    stats, problems, images, masks = inspect_site(spec)
    size = spec.image_size
    empty = np.zeros((1, 1, size, size), np.float32)
    seen = {
        "image": images if images is not None and len(images) else empty,
        "mask": masks if masks is not None and len(masks) else empty.astype(np.uint8),
    }
    guard = EgressGuard(name, Blocklist(seen), mode=privacy_mode, windows=WindowIndex(seen))
    notes = tuple(p[:MAX_PROBLEM_CHARS] for p in problems[:MAX_PROBLEMS])
    reply = InspectReply({k: float(v) for k, v in stats.items()}, notes)
    # a site operator's own command: its problems name the site's files (free text, bounded)
    schema = Schema(
        "metrics",
        f"site:{name}",
        ("driver",),
        metrics=INSPECT,
        records={"problems": {f"{i:03d}": str for i in range(MAX_PROBLEMS)}},
    )
    return guard.check(reply.to_record(src=f"site:{name}", dst="driver"), schema)
