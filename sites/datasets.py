"""Site data: built inside the site actor from a spec, never in the driver.

A spec is a small dict of strings and numbers (benchmark, site name and index,
seed, sizes). The registry maps a benchmark name to its builder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.phantom import phantom_site


@dataclass
class SiteData:
    """A site's private arrays: images (N, C, H, W) float32 in [0, 1], masks (N, 1, H, W) uint8."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    description: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("train_x", "train_y", "test_x", "test_y"):
            arr = getattr(self, name)
            if arr.ndim != 4:
                raise ValueError(f"SiteData.{name}: expected (N, C, H, W), got shape {arr.shape}")
        if len(self.train_x) != len(self.train_y) or len(self.test_x) != len(self.test_y):
            raise ValueError("SiteData: images and masks differ in count")
        if len(self.train_x) == 0 or len(self.test_x) == 0:
            raise ValueError("SiteData: a site needs at least one train and one test pair")

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.train_x.shape[-2:])

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])


def _phantom(spec: dict) -> SiteData:
    """Generated on first use and kept on the site's own disk (``data_dir``), if it has one."""
    key = f"{spec['seed']}-{spec['image_size']}-{spec['n_train']}-{spec['n_test']}"
    path = Path(spec["data_dir"]) / f"phantom-{key}.npz" if spec.get("data_dir") else None
    if path is None or not path.exists():
        x, y, tx, ty, acq = phantom_site(
            int(spec["site_index"]), int(spec["seed"]), int(spec["n_train"]), int(spec["n_test"]),
            int(spec["image_size"]),
        )
        if path is None:
            return SiteData(x, y, tx, ty, description=acq.as_dict())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            np.savez(fh, train_x=x, train_y=y, test_x=tx, test_y=ty,
                     acq=json.dumps(acq.as_dict()))
        os.replace(tmp, path)
    with np.load(path) as z:
        return SiteData(z["train_x"], z["train_y"], z["test_x"], z["test_y"],
                        description=json.loads(str(z["acq"])))


BENCHMARKS: dict[str, Callable[[dict], SiteData]] = {
    "phantom": _phantom,
}


def build_site_data(spec: dict) -> SiteData:
    """Build one site's data from its spec (inside the site's process)."""
    name = spec.get("benchmark")
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name](spec)
