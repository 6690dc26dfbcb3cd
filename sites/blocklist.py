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
                    variants = [s.astype(t) for t in (np.float16, np.float32, np.float64, np.uint8, np.int64, bool)]
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
        if arr.ndim >= 2 and min(arr.shape[-2:]) >= 8 and 0.25 <= arr.shape[-2] / arr.shape[-1] <= 4:
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
                    hit = ("near-duplicate", f"{where} correlates {corr[k]:.3f} with {self.labels[k]}")
                    break
            if hit is None and v.shape[0] < h and v.shape[1] < w and min(v.shape) >= h // 4:
                tmpl = v.astype(np.float32)
                if tmpl.std() > 1e-6:
                    for s, label in zip(self.slices, self.labels, strict=True):
                        score = float(cv2.matchTemplate(s, tmpl, cv2.TM_CCOEFF_NORMED).max())
                        if score >= NEAR_THRESHOLD:
                            hit = ("crop", f"{where} matches a crop of {label} (correlation {score:.3f})")
                            break
            if hit:
                yield hit
