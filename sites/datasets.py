"""Site data: built inside the site actor from a spec, never in the driver.

A spec (:class:`~simulator.payloads.SiteSpec`) holds strings and numbers only (benchmark,
site name and index, seed, sizes, the site's own data folder). The registry maps a benchmark kind to
its builder: the generated benchmarks (``phantom``, ``mni152``) are built here and
cached on the site's own disk; user data sets are read from the site's folder by
:mod:`sites.readers`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.benchmarks.catalog import USER_LAYOUTS
from simulator.benchmarks.mni152 import mni152_site
from simulator.benchmarks.phantom import phantom_site
from simulator.payloads import SiteSpec
from sites.readers import DataError, read_site, split_cases, stack


@dataclass
class SiteData:
    """A site's private arrays: images (N, C, H, W) float32 in [0, 1], masks (N, 1, H, W) uint8."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    description: dict[str, float] = field(default_factory=dict)
    #: the case (patient) each train slice belongs to, the unit of differential privacy; None:
    #: every slice is a case of its own (the generated benchmarks draw one slice per case)
    train_cases: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("train_x", "train_y", "test_x", "test_y"):
            arr = getattr(self, name)
            if arr.ndim != 4:
                raise ValueError(f"SiteData.{name}: expected (N, C, H, W), got shape {arr.shape}")
        if len(self.train_x) != len(self.train_y) or len(self.test_x) != len(self.test_y):
            raise ValueError("SiteData: images and masks differ in count")
        if len(self.train_x) == 0 or len(self.test_x) == 0:
            raise ValueError("SiteData: a site needs at least one train and one test pair")
        if self.train_cases is not None and len(self.train_cases) != len(self.train_x):
            raise ValueError(
                f"SiteData.train_cases: {len(self.train_cases)} case ids for {len(self.train_x)} "
                "slices"
            )

    def case_ids(self) -> np.ndarray:
        """The case of every train slice (0 .. cases - 1)."""
        if self.train_cases is None:
            return np.arange(len(self.train_x))
        return np.unique(self.train_cases, return_inverse=True)[1].reshape(-1)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.train_x.shape[-2:])

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])


def _generated(spec: SiteSpec, make: Callable) -> SiteData:
    """Generated on first use and kept on the site's own disk (``data_dir``), if it has one."""
    key = f"{spec.seed}-{spec.image_size}-{spec.n_train}-{spec.n_test}"
    path = Path(spec.data_dir) / f"{spec.benchmark}-{key}.npz" if spec.data_dir else None
    if path is None or not path.exists():
        x, y, tx, ty, acq = make(
            spec.site_index, spec.seed, spec.n_train, spec.n_test, spec.image_size
        )
        if path is None:
            return SiteData(x, y, tx, ty, description=acq.as_dict())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            np.savez(fh, train_x=x, train_y=y, test_x=tx, test_y=ty, acq=json.dumps(acq.as_dict()))
        os.replace(tmp, path)
    with np.load(path) as z:
        return SiteData(
            z["train_x"],
            z["train_y"],
            z["test_x"],
            z["test_y"],
            description=json.loads(str(z["acq"])),
        )


def _user_data(spec: SiteSpec) -> SiteData:
    """Every case in the site's folder, read with the reader of its layout; bad files stop the
    run."""
    site_dir = Path(spec.data_dir)
    read = read_site(spec.benchmark, site_dir, spec.image_size, spec.target)
    train, test = split_cases(read.cases, spec.test_fraction, spec.seed, site_dir)
    x, y = stack(train)
    tx, ty = stack(test)
    if x.shape[1] != tx.shape[1]:
        raise DataError(
            f"{site_dir}: train images have {x.shape[1]} channels but test images "
            f"{tx.shape[1]}; expected one channel count per site"
        )
    cases = np.concatenate([np.full(len(c.images), i) for i, c in enumerate(train)])
    return SiteData(
        x,
        y,
        tx,
        ty,
        description={"cases_train": len(train), "cases_test": len(test), "files": read.files},
        train_cases=cases,
    )


BENCHMARKS: dict[str, Callable[[SiteSpec], SiteData]] = {
    "phantom": lambda spec: _generated(spec, phantom_site),
    "mni152": lambda spec: _generated(spec, mni152_site),
    "folder": _user_data,
    "prostate": _user_data,
    "fundus": _user_data,
}


def inspect_site(
    spec: SiteSpec,
) -> tuple[dict[str, float], list[str], np.ndarray | None, np.ndarray | None]:
    """Statistics of one site's data, every problem found (nothing raised for bad files), and the
    images and masks read (kept in the site: they seed its egress guard)."""
    if spec.benchmark not in USER_LAYOUTS:
        d = build_site_data(spec)
        stats = _array_stats(d.train_x, d.train_y, d.test_x, d.test_y)
        stats.update(cases_train=len(d.train_x), cases_test=len(d.test_x), problems=0)
        return (
            stats,
            [],
            np.concatenate([d.train_x, d.test_x]),
            np.concatenate([d.train_y, d.test_y]),
        )
    site_dir = Path(spec.data_dir)
    try:
        read = read_site(spec.benchmark, site_dir, spec.image_size, spec.target, collect=True)
    except DataError as exc:
        return {"cases_train": 0, "cases_test": 0, "problems": 1}, [str(exc)], None, None
    problems = list(read.problems)
    stats: dict[str, float] = {"files": read.files}
    images = masks = None
    if read.cases:
        try:
            train, test = split_cases(read.cases, spec.test_fraction, spec.seed, site_dir)
            stats.update(cases_train=len(train), cases_test=len(test))
        except DataError as exc:
            problems.append(str(exc))
        try:
            images, masks = stack(read.cases)
            stats.update(_array_stats(images, masks))
        except DataError as exc:
            problems.append(str(exc))
        raw = [c.raw for c in read.cases]
        for key in ("height", "width"):
            stats[f"raw_{key}_min"] = min(r[key] for r in raw)
            stats[f"raw_{key}_max"] = max(r[key] for r in raw)
        stats["raw_intensity_min"] = min(r["min"] for r in raw)
        stats["raw_intensity_max"] = max(r["max"] for r in raw)
    stats["problems"] = len(problems)
    return stats, problems, images, masks


def _array_stats(*arrays: np.ndarray) -> dict[str, float]:
    """Counts, sizes and intensity statistics of image/mask pairs (images first, then masks)."""
    xs, ys = arrays[0::2], arrays[1::2]
    x = np.concatenate([a.reshape(len(a), a.shape[1], -1) for a in xs])
    y = np.concatenate([a.reshape(len(a), -1) for a in ys])
    return {
        "slices": len(x),
        "height": xs[0].shape[-2],
        "width": xs[0].shape[-1],
        "channels": xs[0].shape[1],
        "intensity_mean": float(x.mean()),
        "intensity_std": float(x.std()),
        "intensity_p01": float(np.percentile(x, 1)),
        "intensity_p99": float(np.percentile(x, 99)),
        "foreground_fraction": float(y.mean()),
        "empty_masks": int((y.reshape(len(y), -1).max(1) == 0).sum()),
    }


def build_site_data(spec: SiteSpec) -> SiteData:
    """Build one site's data from its spec (inside the site's process)."""
    name = spec.benchmark
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name](spec)
