"""A site's blocklist of its own real images and masks, for the egress guard.

Two kinds of match:

* exact: the bytes of every real 2-D slice (images and masks of both splits) in
  every dtype a copy is likely to take (float16/32/64, uint8 as stored and as
  x * 255, bool, int64), and of its transpose;
* near-duplicate: the normalised correlation of a 16 x 16 thumbnail with the
  thumbnails of the real slices (invariant to intensity scale and shift, so it
  catches cast, rescaled, shifted and resized copies), and for smaller 2-D arrays
  a normalised template match inside each real slice (crops).
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

THUMB = 16
NEAR_THRESHOLD = 0.95


def _thumb(a: np.ndarray) -> np.ndarray | None:
    t = cv2.resize(a.astype(np.float32), (THUMB, THUMB), interpolation=cv2.INTER_AREA).ravel()
    t = t - t.mean()
    n = np.linalg.norm(t)
    return t / n if n > 1e-6 else None


def _digest(a: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).digest()


class Blocklist:
    """What must never leave one site."""

    def __init__(self, named: dict[str, np.ndarray]) -> None:
        self.exact: dict[bytes, str] = {}
        thumbs, labels, slices = [], [], []
        self.shape: tuple[int, int] | None = None
        for name, arr in named.items():
            for i in range(arr.shape[0]):
                for c in range(arr.shape[1]):
                    s = arr[i, c]
                    self.shape = self.shape or s.shape
                    label = f"{name}[{i}]" + (f" channel {c}" if arr.shape[1] > 1 else "")
                    variants = [
                        s.astype(t)
                        for t in (np.float16, np.float32, np.float64, np.uint8, np.int64, bool)
                    ]
                    if s.dtype.kind == "f":
                        variants.append(np.round(np.clip(s, 0, 1) * 255).astype(np.uint8))
                    for v in variants:
                        if v.any():  # an all-zero slice (an empty mask) identifies nothing
                            self.exact.setdefault(_digest(v), label)
                            self.exact.setdefault(_digest(v.T), label)
                    t = _thumb(s)
                    if t is not None:
                        thumbs.append(t)
                        labels.append(label)
                        slices.append(s.astype(np.float32))
        self.thumbs = np.stack(thumbs) if thumbs else np.zeros((0, THUMB * THUMB), np.float32)
        self.labels = labels
        self.slices = slices

    def views(self, arr: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The 2-D views of an array that could hold an image (trailing slices, reshaped blocks)."""
        h, w = self.shape
        out = []
        if (
            arr.ndim >= 2
            and min(arr.shape[-2:]) >= 8
            and 0.25 <= arr.shape[-2] / arr.shape[-1] <= 4
        ):
            flat = arr.reshape(-1, *arr.shape[-2:])
            out += [(f"slice {i}", flat[i]) for i in range(min(len(flat), 4096))]
        if arr.size and arr.size % (h * w) == 0 and (arr.ndim < 2 or arr.shape[-2:] != (h, w)):
            blocks = arr.reshape(-1, h, w)
            out += [(f"block {i}", blocks[i]) for i in range(min(len(blocks), 4096))]
        return out

    def match(self, arr: np.ndarray) -> tuple[str, str] | None:
        """``(rule, description)`` of the first real slice ``arr`` holds, else None."""
        return next(self._matches(arr), None)

    def match_all(self, arr: np.ndarray, limit: int = 64) -> list[tuple[str, str]]:
        """Every real slice ``arr`` holds (up to ``limit``): which data, exactly, would leave."""
        out = []
        for hit in self._matches(arr):
            out.append(hit)
            if len(out) >= limit:
                break
        return out

    def _matches(self, arr: np.ndarray):
        if self.shape is None or arr.dtype.kind not in "fiub":
            return
        h, w = self.shape
        for where, v in self.views(arr):
            if v.shape in ((h, w), (w, h)) and v.any():
                label = self.exact.get(_digest(v))
                if label:
                    yield "exact", f"{where} is a byte-exact copy of {label}"
                    continue
            t = _thumb(v)
            if t is None or not len(self.thumbs):
                continue
            hit = None
            for cand in (t, _thumb(v.T)):
                corr = self.thumbs @ cand
                k = int(corr.argmax())
                if corr[k] >= NEAR_THRESHOLD:
                    hit = (
                        "near-duplicate",
                        f"{where} correlates {corr[k]:.3f} with {self.labels[k]}",
                    )
                    break
            if hit is None and v.shape[0] < h and v.shape[1] < w and min(v.shape) >= h // 4:
                tmpl = v.astype(np.float32)
                if tmpl.std() > 1e-6:
                    for s, label in zip(self.slices, self.labels, strict=True):
                        score = float(cv2.matchTemplate(s, tmpl, cv2.TM_CCOEFF_NORMED).max())
                        if score >= NEAR_THRESHOLD:
                            hit = (
                                "crop",
                                f"{where} matches a crop of {label} (correlation {score:.3f})",
                            )
                            break
            if hit:
                yield hit


#: values per window of the offset scan, and the resolution values are compared at
WINDOW = 16
QUANTUM = 1e-6
_MIX = np.uint64(0x9E3779B97F4A7C15)
_COEF = np.random.default_rng(20261201).integers(
    1, 2**63, size=WINDOW, dtype=np.uint64
) | np.uint64(1)


def _quantised(values: np.ndarray) -> np.ndarray:
    """|v| at the comparison resolution, as integers (sign-invariant; non-finite values map to
    -1)."""
    v = np.abs(np.asarray(values, dtype=np.float64).ravel())
    q = np.full(v.shape, -1, dtype=np.int64)
    ok = np.isfinite(v) & (v < 9e12)
    q[ok] = np.rint(v[ok] / QUANTUM).astype(np.int64)
    return q


#: a window in which fewer than this many values differ from its most common value is left out
MIN_ODD = 3


def _window_hashes(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit hash of every window of ``WINDOW`` consecutive values, and whether it is
    informative.

    A window in which one value fills all but one or two places (a mask's zeros, a flat
    background, with one or two stray values) identifies almost nothing, and such windows are
    left out: small weights or Fisher statistics, which quantise to zeros with a stray 1e-6, repeat
    them by chance. A value that fills 14 or more of the 16 places is the window's median, so the
    test is how many values differ from the median.
    """
    if q.size < WINDOW:
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    w = np.lib.stride_tricks.sliding_window_view(q.view(np.uint64), WINDOW)
    with np.errstate(over="ignore"):
        mixed = (w ^ (w >> np.uint64(29))) * _MIX
        h = (mixed * _COEF).sum(axis=1, dtype=np.uint64)
    median = np.partition(w, WINDOW // 2 - 1, axis=1)[:, WINDOW // 2 - 1 : WINDOW // 2]
    informative = (w != median).sum(axis=1) >= MIN_ODD
    return h, informative


class WindowIndex:
    """Every run of ``WINDOW`` consecutive real values (rows and columns of each image and mask),
    for finding copies at any offset inside any outgoing array or run of scalars.

    Values are compared sign-invariantly at a resolution of ``QUANTUM`` (a copy that was negated,
    cast to another float type, or rounded as the guard rounds metrics still matches).
    """

    def __init__(self, named: dict[str, np.ndarray]) -> None:
        hashes = []
        for arr in named.values():
            for i in range(arr.shape[0]):
                for c in range(arr.shape[1]):
                    s = arr[i, c].astype(np.float64)
                    for stream in (s.ravel(), s.T.ravel()):
                        h, informative = _window_hashes(_quantised(stream))
                        hashes.append(h[informative])
        self.hashes = np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)

    @property
    def nbytes(self) -> int:
        return int(self.hashes.nbytes)

    def find(self, values: np.ndarray) -> int | None:
        """The offset of the first window of ``values`` that copies real values, else None."""
        if not self.hashes.size:
            return None
        h, informative = _window_hashes(_quantised(values))
        if not h.size:
            return None
        pos = np.minimum(np.searchsorted(self.hashes, h), self.hashes.size - 1)
        hit = (self.hashes[pos] == h) & informative
        return int(np.argmax(hit)) if hit.any() else None
