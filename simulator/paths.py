"""Where smg-sim keeps files outside run folders."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SMG_SIM_CACHE``, else ``$XDG_CACHE_HOME/smg-sim``, else ``~/.cache/smg-sim``."""
    if os.environ.get("SMG_SIM_CACHE"):
        return Path(os.environ["SMG_SIM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "smg-sim"


def site_data_root() -> Path:
    """The simulated sites' own disks: each site keeps its generated data under here."""
    return cache_root() / "sites"
