"""The operator's operations on a site: a preview of its data on its own disk, an inspection of
its data, and fault injection. Only a caller holding the operator's token reaches them (see
:meth:`sites.site.Site.handle`); a learner's request cannot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import RecordDict

from simulator import schemas
from simulator.benchmarks.catalog import USER_LAYOUTS
from simulator.filetrace import record as record_access
from simulator.outlines import encode_png, label, outlined_tile
from simulator.payloads import FaultRequest, PreviewRequest
from sites.inspect import inspect_reply
from sites.refusals import SiteRefusal

#: the most images one preview holds
MAX_PREVIEW = 16


class OperatorOps:
    """The operator's operations of one site (``site``: a :class:`sites.site.Site`)."""

    def __init__(self, site: Any) -> None:
        self.site = site

    def operations(self) -> dict[str, tuple]:
        return {
            "preview": (self.preview, PreviewRequest),
            "inspect": (self.inspect, None),
            "crash_during": (self.crash_during, FaultRequest),
        }

    def preview(self, req: PreviewRequest) -> RecordDict:
        """Save up to ``MAX_PREVIEW`` train images with mask outlines as one PNG on this site's
        own disk: only its size leaves. Real (user) images need the operator's consent in the
        site's own settings, and are written inside the site's own data folder unless the
        operator names another."""
        s = self.site
        real = s.spec.benchmark in USER_LAYOUTS
        if real and not (req.real and s.settings.allow_real_previews):
            raise SiteRefusal(
                "refused-setting", "previews of real images need the operator's consent"
            )
        folder = req.folder or (s.spec.data_dir if real else "")
        if not folder:
            raise SiteRefusal("bad-request", "no folder to write the preview into")
        path = Path(folder) / f"{s.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        d = s.data
        n = min(req.n, MAX_PREVIEW, len(d.train_x))
        tiles = [outlined_tile(d.train_x[i, 0], d.train_y[i, 0], 128) for i in range(n)]
        label(tiles[0], s.name)
        path.write_bytes(encode_png(np.concatenate(tiles, axis=0)))
        record_access(path, "preview")  # where real images went, even outside the data folders
        return s.metrics(schemas.PREVIEW, dst="driver", bytes_written=path.stat().st_size)

    def inspect(self) -> RecordDict:
        """The site's data statistics and the problems its reader found."""
        return inspect_reply(self.site.name, self.site.spec, self.site.settings.guard_mode)

    def crash_during(self, req: FaultRequest) -> RecordDict:
        """Fault injection (``--inject-fault kill-site``): this process exits during its next
        ``phase`` (visit or evaluation), as a crash would; Ray restarts it."""
        if req.phase not in ("visit", "evaluation"):
            raise SiteRefusal("bad-request", f"crash_during: phase {req.phase!r}")
        self.site.crash_in = req.phase
        return self.site.metrics(schemas.ARMED, dst="driver", armed=1)
