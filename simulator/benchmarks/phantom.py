"""The ``phantom`` benchmark: procedural 2-D abdominal-like slices with site shifts.

Each slice has a body outline with a fat rim, a lobed organ (the segmentation
target), a spine and a few vessel-like blobs. Anatomy varies per case. Each site
has its own acquisition: a tissue-contrast family (which tissue is bright, as
between MR sequences or CT), an intensity curve (gamma), global contrast and
brightness, a smooth bias field, noise, blur and a lower acquisition resolution.
Everything is deterministic given the seed; the data is built inside the site
actor that owns it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from simulator.seeding import numpy_rng

# Tissue labels of the anatomy map
BG, BODY, FAT, ORGAN, SPINE, VESSEL = range(6)

# Contrast families: intensity of (body, fat, organ, spine, vessel) before the curve.
CONTRAST_FAMILIES = (
    (0.40, 0.85, 0.60, 0.95, 0.75),  # T1-like: fat bright, organ a bit above body
    (0.45, 0.55, 0.85, 0.20, 0.35),  # T2-like: organ bright, spine dark
    (0.50, 0.15, 0.62, 1.00, 0.80),  # CT-like: fat dark, bone bright, vessels enhanced
    (0.70, 0.35, 0.30, 0.60, 0.90),  # inverted: organ darker than body
    (0.35, 0.95, 0.50, 0.45, 0.15),  # fat-bright, organ mid, vessels dark
    (0.60, 0.25, 0.95, 0.30, 0.60),  # organ very bright, fat dark
)


@dataclass(frozen=True)
class Acquisition:
    """One site's acquisition shift (all numbers are applied in this order)."""

    family: int
    tissue: tuple[float, ...]  # intensity per tissue class before the curve
    gamma: float
    contrast: float
    brightness: float
    bias: float
    bias_angle: float
    noise: float
    blur: float
    resolution: float
    organ_scale: float

    def as_dict(self) -> dict[str, float]:
        return {
            "family": float(self.family),
            "gamma": self.gamma,
            "contrast": self.contrast,
            "brightness": self.brightness,
            "bias": self.bias,
            "noise": self.noise,
            "blur": self.blur,
            "resolution": self.resolution,
            "organ_scale": self.organ_scale,
        }


def site_acquisition(
    site_index: int,
    rng: np.random.Generator,
    families: tuple[tuple[float, ...], ...] = CONTRAST_FAMILIES,
) -> Acquisition:
    """Draw one site's acquisition; the contrast family rotates with the site index."""
    family = site_index % len(families)
    base = np.array(families[family])
    tissue = np.clip(base + rng.normal(0, 0.04, size=base.shape), 0.05, 1.0)
    return Acquisition(
        family=family,
        tissue=tuple(float(t) for t in tissue),
        gamma=float(np.exp(rng.uniform(np.log(0.6), np.log(1.7)))),
        contrast=float(rng.uniform(0.75, 1.25)),
        brightness=float(rng.uniform(-0.08, 0.08)),
        bias=float(rng.uniform(0.0, 0.35)),
        bias_angle=float(rng.uniform(0, 2 * np.pi)),
        noise=float(rng.uniform(0.01, 0.07)),
        blur=float(rng.uniform(0.0, 1.0)),
        resolution=float(rng.uniform(0.5, 1.0)),
        organ_scale=float(rng.uniform(0.85, 1.15)),
    )


def _smooth_field(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    coarse = rng.normal(0, 1, size=(6, 6)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return field * scale


def anatomy(rng: np.random.Generator, size: int, organ_scale: float = 1.0) -> np.ndarray:
    """A label map (uint8) of one case's anatomy."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy = yy / (size - 1) * 2 - 1
    xx = xx / (size - 1) * 2 - 1
    labels = np.zeros((size, size), np.uint8)
    # Body outline: ellipse with a low-frequency wobble of its boundary
    cx, cy = rng.normal(0, 0.03, 2)
    rx, ry = rng.uniform(0.78, 0.9), rng.uniform(0.6, 0.72)
    wobble = _smooth_field(rng, size, 0.04)
    body_r = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 + wobble
    labels[body_r < 1.0] = FAT
    labels[body_r < rng.uniform(0.72, 0.82)] = BODY
    # Organ: union of 2-3 rotated ellipses around a base position, then smoothed
    organ_field = np.full((size, size), np.inf, np.float32)
    ox, oy = rng.uniform(-0.35, 0.25), rng.uniform(-0.3, 0.05)
    for _ in range(int(rng.integers(2, 4))):
        ex, ey = ox + rng.normal(0, 0.08), oy + rng.normal(0, 0.06)
        ax = rng.uniform(0.16, 0.28) * organ_scale
        ay = rng.uniform(0.12, 0.22) * organ_scale
        th = rng.uniform(0, np.pi)
        u = (xx - ex) * np.cos(th) + (yy - ey) * np.sin(th)
        v = -(xx - ex) * np.sin(th) + (yy - ey) * np.cos(th)
        organ_field = np.minimum(organ_field, (u / ax) ** 2 + (v / ay) ** 2)
    organ_field = organ_field + _smooth_field(rng, size, 0.15)
    organ = (organ_field < 1.0) & (labels == BODY)
    # Spine: a round bright blob at the back, vessels: small blobs near it
    sx, sy = rng.normal(0, 0.03), ry * 0.62 + cy
    spine = ((xx - sx) / 0.11) ** 2 + ((yy - sy) / 0.09) ** 2 < 1
    labels[spine & (labels > 0)] = SPINE
    for _ in range(int(rng.integers(1, 4))):
        vx, vy = rng.uniform(-0.3, 0.4), rng.uniform(0.0, 0.35)
        vr = rng.uniform(0.04, 0.07)
        vessel = (xx - vx) ** 2 + (yy - vy) ** 2 < vr**2
        labels[vessel & (labels == BODY)] = VESSEL
    labels[organ] = ORGAN
    return labels


def render(labels: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Turn an anatomy map into an image under one site's acquisition (float32 in [0, 1])."""
    size = labels.shape[0]
    values = np.array((0.0, *acq.tissue), np.float32)
    img = values[labels]
    # tissue texture (low-frequency, then fine)
    img = img + (labels > 0) * (_smooth_field(rng, size, 0.03) + rng.normal(0, 0.015, img.shape))
    return acquire(img, acq, rng)


def acquire(img: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Apply an acquisition's intensity curve, bias field, blur, resolution and noise."""
    size = img.shape[0]
    img = np.clip(img, 0, 1) ** acq.gamma
    img = img * acq.contrast + acq.brightness
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1
    ramp = np.cos(acq.bias_angle) * xx + np.sin(acq.bias_angle) * yy
    img = img * (1.0 + acq.bias * ramp)
    if acq.blur > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), acq.blur * size / 64)
    low = max(8, int(round(size * acq.resolution)))
    if low < size:
        img = cv2.resize(
            cv2.resize(img, (low, low), interpolation=cv2.INTER_AREA),
            (size, size),
            interpolation=cv2.INTER_LINEAR,
        )
    img = img + rng.normal(0, acq.noise, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def phantom_site(site_index: int, seed: int, n_train: int, n_test: int, size: int):
    """Images (N, 1, H, W) float32 and masks (N, 1, H, W) uint8 of one site, train and test."""
    rng = numpy_rng(seed)
    acq = site_acquisition(site_index, rng)
    images, masks = [], []
    for _ in range(n_train + n_test):
        labels = anatomy(rng, size, acq.organ_scale)
        images.append(render(labels, acq, rng))
        masks.append((labels == ORGAN).astype(np.uint8))
    x = np.stack(images)[:, None]
    y = np.stack(masks)[:, None]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], acq


# -- public pool for the SMD backbone -------------------------------------------------------
#: Width of the appearance vector that conditions SMD pre-training.
APPEARANCE_DIM = 13


def random_acquisition(
    rng: np.random.Generator, families: tuple[tuple[float, ...], ...] = CONTRAST_FAMILIES
) -> Acquisition:
    """A random acquisition for the public pool: tissue intensities drawn freely, not by family."""
    acq = site_acquisition(0, rng, families)
    tissue = tuple(float(t) for t in rng.uniform(0.05, 1.0, size=len(families[0])))
    return Acquisition(**{**acq.__dict__, "family": -1, "tissue": tissue})


def appearance_vector(acq: Acquisition) -> np.ndarray:
    """The acquisition as a vector of roughly unit scale (the SMD pre-training condition)."""
    t = np.array(acq.tissue, np.float32) * 2 - 1
    rest = np.array(
        [
            np.log(acq.gamma) / 0.5,
            (acq.contrast - 1.0) / 0.25,
            acq.brightness / 0.08,
            acq.bias * np.cos(acq.bias_angle) / 0.35,
            acq.bias * np.sin(acq.bias_angle) / 0.35,
            (acq.noise - 0.04) / 0.03,
            (acq.blur - 0.5) / 0.5,
            (acq.resolution - 0.75) / 0.25,
        ],
        np.float32,
    )
    return np.concatenate([t, rest]).astype(np.float32)


def public_pool(seed: int, n: int, size: int):
    """Public images, masks and appearance vectors; each image has its own random acquisition.

    Used only to pre-train the SMD backbone; its seeds come from a namespace that no
    site uses, so the pool shares no image with any site.
    """
    rng = numpy_rng(seed)
    images, masks, conds = [], [], []
    for _ in range(n):
        acq = random_acquisition(rng)
        labels = anatomy(rng, size, acq.organ_scale)
        images.append(render(labels, acq, rng))
        masks.append((labels == ORGAN).astype(np.uint8))
        conds.append(appearance_vector(acq))
    return np.stack(images)[:, None], np.stack(masks)[:, None], np.stack(conds)
