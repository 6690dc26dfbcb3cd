"""The ``mni152`` benchmark: real brain anatomy from the MNI152 template in ``nilearn``.

The ICBM 2009a MNI152 T1 template and its grey- and white-matter probability maps
ship inside the ``nilearn`` package (``nilearn/datasets/data``); they are read
from there with nibabel, with no network and no download step, and without
importing nilearn itself.

A case is one axial slice of the template under a random affine transform and a
random elastic deformation (seeded per case), so that every case has its own
anatomy. The target is white matter (probability > 0.5 after deformation). Each
site has its own scanner: tissue contrast (which of CSF, grey and white matter is
bright, as between T1, T2, FLAIR and PD), an intensity curve, bias field, blur,
resolution and noise (the same acquisition model as the phantom benchmark).

No two sites share an image: every site draws its deformations from its own seed,
and within a site the train and test cases come from disjoint slices. The public
pool that pre-trains the SMD backbone is the template itself with random
appearance, from a seed namespace that no site uses.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import cv2
import numpy as np

from simulator.benchmarks.phantom import (
    Acquisition,
    acquire,
    appearance_vector,
    random_acquisition,
    site_acquisition,
)
from simulator.seeding import numpy_rng

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

# Contrast families: intensity of (CSF, grey matter, white matter) before the curve.
MNI_FAMILIES = (
    (0.25, 0.55, 0.85),  # T1-weighted: CSF dark, white matter bright
    (0.95, 0.60, 0.35),  # T2-weighted: CSF bright, white matter dark
    (0.15, 0.80, 0.55),  # FLAIR-like: CSF suppressed, grey matter bright
    (0.65, 0.85, 0.70),  # PD-like: low contrast
    (0.50, 0.30, 0.75),  # grey matter darker than CSF
    (0.85, 0.35, 0.60),  # inverted T1
)
#: Width of the appearance vector that conditions SMD pre-training on this benchmark.
APPEARANCE_DIM = len(MNI_FAMILIES[0]) + 8
#: Fraction of the largest white-matter slice area below which a slice is not used.
MIN_WM_FRACTION = 0.3
#: Every TEST_EVERY-th usable slice holds test cases; the others train cases.
TEST_EVERY = 4


class TemplateMissing(RuntimeError):
    """The MNI152 template files are not where the nilearn package keeps them."""


def template_dir() -> Path:
    """The folder inside the installed ``nilearn`` package that holds the template."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise TemplateMissing(
            "the mni152 benchmark reads the MNI152 template shipped inside the nilearn "
            "package, which is not installed; install smg-sim's dependencies "
            "(pip install -e .) or pip install 'nilearn<0.14'"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    missing = [f for f in TEMPLATE_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise TemplateMissing(
            f"{folder / missing[0]}: expected the MNI152 template file shipped with nilearn; "
            "reinstall nilearn"
        )
    return folder


@functools.lru_cache(maxsize=1)
def volumes() -> dict[str, np.ndarray]:
    """T1, GM, WM and CSF maps as float32 in [0, 1], axes (z, y, x) with anterior up."""
    import nibabel as nib

    folder = template_dir()
    out = {}
    for key, name in TEMPLATE_FILES.items():
        vol = np.asarray(nib.load(str(folder / name)).dataobj, dtype=np.float32) / 255.0
        out[key] = np.ascontiguousarray(np.transpose(vol, (2, 1, 0))[:, ::-1, :])  # (z, y, x)
    brain = np.clip(out["t1"] * 8.0, 0, 1)  # soft brain mask from the skull-stripped T1
    out["csf"] = np.clip(brain - out["gm"] - out["wm"], 0, 1)
    out["brain"] = brain
    # crop the in-plane field of view to the brain (plus a margin), as a scanner would
    ys, xs = np.nonzero(brain.max(axis=0) > 0.1)
    m = 4
    y0, y1 = max(0, ys.min() - m), min(brain.shape[1], ys.max() + m + 1)
    x0, x1 = max(0, xs.min() - m), min(brain.shape[2], xs.max() + m + 1)
    return {k: np.ascontiguousarray(v[:, y0:y1, x0:x1]) for k, v in out.items()}


@functools.lru_cache(maxsize=1)
def usable_slices() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Axial slice indices with enough white matter, split into (train, test) slices."""
    area = (volumes()["wm"] > 0.5).sum(axis=(1, 2))
    zs = np.flatnonzero(area >= MIN_WM_FRACTION * area.max())
    test = tuple(int(z) for i, z in enumerate(zs) if i % TEST_EVERY == TEST_EVERY - 1)
    train = tuple(int(z) for z in zs if z not in test)
    return train, test


def _square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    n = max(h, w)
    out = np.zeros((n, n), np.float32)
    out[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = img
    return out


def deformed_slice(z: int, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The maps of slice ``z`` under a random affine and elastic deformation, at ``size``."""
    vol = volumes()
    maps = {
        k: cv2.resize(_square(vol[k][z]), (size, size), interpolation=cv2.INTER_AREA)
        for k in ("t1", "gm", "wm", "csf", "brain")
    }
    angle = rng.uniform(-12, 12)
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.05, 0.05, size=2) * size
    A = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    A[:, 2] += shift
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    src_x = (A[0, 0] * xx + A[0, 1] * yy + A[0, 2]).astype(np.float32)
    src_y = (A[1, 0] * xx + A[1, 1] * yy + A[1, 2]).astype(np.float32)
    # elastic part: a smooth random displacement of up to a few percent of the size
    sigma = size / 8
    for grid in (src_x, src_y):
        field = cv2.GaussianBlur(rng.uniform(-1, 1, (size, size)).astype(np.float32), (0, 0), sigma)
        field /= np.abs(field).max() + 1e-8
        grid += field * rng.uniform(0.02, 0.05) * size
    return {
        k: cv2.remap(
            m,
            src_x,
            src_y,
            interpolation=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        for k, m in maps.items()
    }


def render(maps: dict[str, np.ndarray], acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Tissue contrast from the probability maps plus the template's own texture, then the
    scanner."""
    csf, gm, wm = acq.tissue
    img = csf * maps["csf"] + gm * maps["gm"] + wm * maps["wm"]
    t1_model = (
        MNI_FAMILIES[0][0] * maps["csf"]
        + MNI_FAMILIES[0][1] * maps["gm"]
        + MNI_FAMILIES[0][2] * maps["wm"]
    )
    img = img + 0.5 * (maps["t1"] - t1_model) * maps["brain"]  # real fine structure of the template
    return acquire(img, acq, rng)


def make_case(
    z: int, size: int, acq: Acquisition, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    maps = deformed_slice(z, size, rng)
    return render(maps, acq, rng), (maps["wm"] > 0.5).astype(np.uint8)


def mni152_site(site_index: int, seed: int, n_train: int, n_test: int, size: int):
    """Images (N, 1, H, W) float32 and white-matter masks (N, 1, H, W) uint8 of one site."""
    rng = numpy_rng(seed)
    acq = site_acquisition(site_index, rng, MNI_FAMILIES)
    train_z, test_z = usable_slices()
    images, masks = [], []
    for i in range(n_train + n_test):
        zs = train_z if i < n_train else test_z
        img, mask = make_case(int(rng.choice(zs)), size, acq, rng)
        images.append(img)
        masks.append(mask)
    x = np.stack(images)[:, None]
    y = np.stack(masks)[:, None]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], acq


def public_pool(seed: int, n: int, size: int):
    """The template with random appearance and deformation, for SMD pre-training only."""
    rng = numpy_rng(seed)
    train_z, test_z = usable_slices()
    zs = train_z + test_z
    images, masks, conds = [], [], []
    for _ in range(n):
        acq = random_acquisition(rng, MNI_FAMILIES)
        img, mask = make_case(int(rng.choice(zs)), size, acq, rng)
        images.append(img)
        masks.append(mask)
        conds.append(appearance_vector(acq))
    return np.stack(images)[:, None], np.stack(masks)[:, None], np.stack(conds)
