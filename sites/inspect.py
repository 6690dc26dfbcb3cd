"""``smg-sim data inspect``: a site's readers run in the site's own process; statistics leave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import RecordDict

from simulator.filetrace import start_trace
from simulator.payloads import InspectReply, SiteSpec
from simulator.schemas import INSPECT, Schema
from sites.blocklist import Blocklist, WindowIndex
from sites.datasets import inspect_site
from sites.egress import EgressGuard

#: Problems sent back per site (the rest are counted).
MAX_PROBLEMS = 64
MAX_PROBLEM_CHARS = 900


class SiteInspector:
    """Reads one site's data in collect mode and reports counts, statistics and problems."""

    def __init__(
        self, name: str, spec: SiteSpec, privacy_mode: str = "strict", trace_file: str | None = None
    ) -> None:
        if trace_file and spec.data_dir:
            start_trace(trace_file, f"site:{name}", [Path(spec.data_dir).parent])
        self.name = name
        self.spec = spec
        self.privacy_mode = privacy_mode

    def inspect(self) -> RecordDict:
        """The site's statistics and problems; the guard holds its images and masks."""
        stats, problems, images, masks = inspect_site(self.spec)
        size = self.spec.image_size
        empty = np.zeros((1, 1, size, size), np.float32)
        seen = {
            "image": images if images is not None and len(images) else empty,
            "mask": masks if masks is not None and len(masks) else empty.astype(np.uint8),
        }
        guard = EgressGuard(
            self.name, Blocklist(seen), mode=self.privacy_mode, windows=WindowIndex(seen)
        )
        notes = tuple(p[:MAX_PROBLEM_CHARS] for p in problems[:MAX_PROBLEMS])
        reply = InspectReply({k: float(v) for k, v in stats.items()}, notes)
        # a site operator's own command: its problems name the site's files (free text, bounded)
        schema = Schema(
            "metrics",
            f"site:{self.name}",
            ("driver",),
            metrics=INSPECT,
            records={"problems": {f"{i:03d}": str for i in range(MAX_PROBLEMS)}},
        )
        return guard.check(reply.to_record(src=f"site:{self.name}", dst="driver"), schema)
