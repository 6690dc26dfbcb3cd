"""Readers for the layouts in which researchers keep multi-site data sets.

They run inside a site actor, on that site's own folder, and return the site's
private arrays. Every problem is a :class:`DataError` that names the file and
what was expected; nothing is dropped silently. In *collect* mode (``smg-sim
data inspect``) problems are gathered and the bad files skipped, so that one run
of ``inspect`` lists all of them.

Layouts (``SITE`` is one folder per site under the root given in the spec):

* ``folder``   ``SITE/images/*.png`` and ``SITE/masks/*.png`` paired by file name,
               optionally under ``SITE/train/`` and ``SITE/test/``; masks hold 0/1
               or 0/255.
* ``prostate`` ``SITE/CaseXX.nii.gz`` with ``CaseXX_segmentation.nii.gz`` (either
               capitalisation); axial slices that contain the organ, intensities
               normalised per volume; split by case, never by slice.
* ``fundus``   ``SITE/.../image/*.png`` with ``SITE/.../mask/*.png`` beside it;
               mask grey levels 0 = cup, 128 = disc, 255 = background; target disc
               (disc and cup) or cup.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from simulator.errors import DataError
from simulator.seeding import numpy_rng

IMAGE_SUFFIXES = (".png",)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
SPLITS = ("train", "test")


@dataclass
class Problems:
    """Raise at the first problem (``collect=False``) or gather them all."""

    collect: bool = False
    found: list[str] = field(default_factory=list)

    def report(self, message: str) -> None:
        if not self.collect:
            raise DataError(message)
        self.found.append(message)


@dataclass
class Case:
    """One case (a 2-D image, or the organ slices of one volume) at the profile size."""

    name: str
    split: str | None  # "train", "test", or None when the layout has no split folders
    images: np.ndarray  # (n, C, S, S) float32 in [0, 1]
    masks: np.ndarray  # (n, 1, S, S) uint8 in {0, 1}
    raw: dict[str, float]  # statistics of the data as read, before resizing


@dataclass
class Read:
    """What a reader found in one site folder."""

    cases: list[Case]
    problems: list[str]
    files: int


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _to_square(img: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    """Pad to a square (centred, zeros) and resize to ``size`` x ``size``."""
    h, w = img.shape[:2]
    n = max(h, w)
    pad = [((n - h) // 2, n - h - (n - h) // 2), ((n - w) // 2, n - w - (n - w) // 2)]
    if img.ndim == 3:
        pad.append((0, 0))
    img = np.pad(img, pad)
    out = cv2.resize(img, (size, size), interpolation=interpolation)
    return out


def _raw_stats(img: np.ndarray) -> dict[str, float]:
    return {
        "height": img.shape[0],
        "width": img.shape[1],
        "min": float(img.min()),
        "max": float(img.max()),
        "mean": float(img.mean()),
        "std": float(img.std()),
    }


def _read_png(path: Path, problems: Problems, flags: int) -> np.ndarray | None:
    # read the bytes in Python (so the file-access trace sees the open), decode with OpenCV
    try:
        buf = np.frombuffer(path.read_bytes(), np.uint8)
    except OSError as exc:
        problems.report(f"{path}: unreadable ({exc.strerror}); expected a PNG file")
        return None
    data = cv2.imdecode(buf, flags) if buf.size else None
    if data is None:
        problems.report(f"{path}: unreadable; expected a PNG file that OpenCV can decode")
    return data


def _image_array(img: np.ndarray, size: int) -> np.ndarray:
    """(C, S, S) float32 in [0, 1] from a grey or BGR(A) image of any integer depth."""
    scale = float(np.iinfo(img.dtype).max) if np.issubdtype(img.dtype, np.integer) else 1.0
    img = img.astype(np.float32) / scale
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    img = _to_square(img, size, cv2.INTER_AREA)
    return img[None] if img.ndim == 2 else np.transpose(img, (2, 0, 1))


def _mask_array(mask: np.ndarray, size: int) -> np.ndarray:
    return _to_square(mask.astype(np.uint8), size, cv2.INTER_NEAREST)[None]


def _pairs(image_dir: Path, mask_dir: Path, problems: Problems) -> list[tuple[Path, Path]]:
    """Image and mask files paired by name; an image without a mask is a problem."""
    if not mask_dir.is_dir():
        problems.report(f"{mask_dir}: missing; expected a masks folder beside {image_dir}")
        return []
    images = sorted(p for p in image_dir.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
    masks = {_stem(p): p for p in mask_dir.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES)}
    pairs = []
    for img in images:
        mask = masks.pop(_stem(img), None)
        if mask is None:
            problems.report(f"{img}: no mask; expected {mask_dir / img.name}")
            continue
        pairs.append((img, mask))
    for mask in sorted(masks.values()):
        problems.report(f"{mask}: mask without an image; expected {image_dir / mask.name}")
    return pairs


def _read_pair(
    img_path: Path,
    mask_path: Path,
    split: str | None,
    size: int,
    problems: Problems,
    binarise: Callable[[np.ndarray, Path, Problems], np.ndarray | None],
) -> Case | None:
    img = _read_png(img_path, problems, cv2.IMREAD_UNCHANGED)
    mask = _read_png(mask_path, problems, cv2.IMREAD_GRAYSCALE)
    if img is None or mask is None:
        return None
    if img.shape[:2] != mask.shape[:2]:
        problems.report(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {img_path.name} "
            f"is {img.shape[1]}x{img.shape[0]}; expected the same size"
        )
        return None
    binary = binarise(mask, mask_path, problems)
    if binary is None:
        return None
    raw = _raw_stats(img)
    return Case(
        _stem(img_path), split, _image_array(img, size)[None], _mask_array(binary, size)[None], raw
    )


def _binary_mask(mask: np.ndarray, path: Path, problems: Problems) -> np.ndarray | None:
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 1}:
        return mask
    if set(values.tolist()) <= {0, 255}:
        return (mask == 255).astype(np.uint8)
    problems.report(f"{path}: mask has values {_list(values)}; expected 0/1 or 0/255")
    return None


def _list(values: np.ndarray, n: int = 6) -> str:
    shown = ", ".join(str(v) for v in values[:n].tolist())
    return f"{{{shown}{', ...' if len(values) > n else ''}}}"


def read_folder(site_dir: Path, size: int, problems: Problems, target: str = "auto") -> Read:
    """``SITE/images`` + ``SITE/masks``, or the same under ``SITE/train`` and ``SITE/test``."""
    layouts = [(s, site_dir / s) for s in SPLITS if (site_dir / s).is_dir()]
    if not layouts:
        layouts = [(None, site_dir)]
    cases, files = [], 0
    for split, root in layouts:
        if not (root / "images").is_dir():
            problems.report(
                f"{root / 'images'}: missing; expected images/ and masks/ of PNG files "
                f"paired by name"
            )
            continue
        for img, mask in _pairs(root / "images", root / "masks", problems):
            files += 2
            case = _read_pair(img, mask, split, size, problems, _binary_mask)
            if case is not None:
                cases.append(case)
    return Read(cases, problems.found, files)


def _fundus_mask(target: str) -> Callable[[np.ndarray, Path, Problems], np.ndarray | None]:
    def binarise(mask: np.ndarray, path: Path, problems: Problems) -> np.ndarray | None:
        # resampled masks have grey levels near the three labels; anything else is wrong
        near = (mask <= 32) | ((mask >= 96) & (mask <= 160)) | (mask >= 224)
        if not near.all():
            bad = np.unique(mask[~near])
            problems.report(
                f"{path}: mask has values {_list(bad)}; expected grey levels 0 (cup), "
                f"128 (disc) and 255 (background)"
            )
            return None
        return (mask <= 32).astype(np.uint8) if target == "cup" else (mask <= 160).astype(np.uint8)

    return binarise


def read_fundus(site_dir: Path, size: int, problems: Problems, target: str = "auto") -> Read:
    """Every ``image`` folder under ``SITE`` with its sibling ``mask`` folder."""
    target = "disc" if target == "auto" else target
    image_dirs = sorted(
        p for p in site_dir.rglob("*") if p.is_dir() and p.name.lower() in ("image", "images")
    )
    if not image_dirs:
        problems.report(
            f"{site_dir}: no image/ folder found; expected {site_dir.name}/.../image/*.png "
            f"with .../mask/*.png beside it"
        )
    cases, files = [], 0
    for image_dir in image_dirs:
        mask_dir = next(
            (
                image_dir.parent / n
                for n in ("mask", "masks", "Mask")
                if (image_dir.parent / n).is_dir()
            ),
            image_dir.parent / "mask",
        )
        parts = {p.lower() for p in image_dir.relative_to(site_dir).parts}
        split = next((s for s in SPLITS if s in parts), None)
        for img, mask in _pairs(image_dir, mask_dir, problems):
            files += 2
            case = _read_pair(img, mask, split, size, problems, _fundus_mask(target))
            if case is not None:
                cases.append(case)
    return Read(cases, problems.found, files)


_CASE = re.compile(r"^(?P<case>.+?)(?P<seg>_segmentation)?$", re.IGNORECASE)


def _normalise_volume(vol: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(vol, [0.5, 99.5])
    return np.clip((vol - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def read_prostate(site_dir: Path, size: int, problems: Problems, target: str = "auto") -> Read:
    """``CaseXX.nii.gz`` + ``CaseXX_segmentation.nii.gz``: axial slices with organ, per-volume
    normalised."""
    import nibabel as nib

    volumes, segs = {}, {}
    for p in sorted(site_dir.iterdir()):
        if not p.name.lower().endswith(NIFTI_SUFFIXES):
            continue
        m = _CASE.match(_stem(p))
        (segs if m.group("seg") else volumes)[m.group("case")] = p
    cases, files = [], 0
    for name, vol_path in volumes.items():
        seg_path = segs.pop(name, None)
        if seg_path is None:
            problems.report(
                f"{vol_path}: no segmentation; expected "
                f"{site_dir / (name + '_segmentation.nii.gz')}"
            )
            continue
        files += 2
        try:
            vol = np.asarray(nib.load(str(vol_path)).dataobj, dtype=np.float32)
        except Exception as exc:  # nibabel raises several types for bad files
            problems.report(
                f"{vol_path}: unreadable ({type(exc).__name__}: {exc}); expected a NIfTI volume"
            )
            continue
        try:
            seg = np.asarray(nib.load(str(seg_path)).dataobj)
        except Exception as exc:
            problems.report(
                f"{seg_path}: unreadable ({type(exc).__name__}: {exc}); expected a NIfTI volume"
            )
            continue
        vol, seg = np.squeeze(vol), np.squeeze(seg)
        if vol.ndim != 3:
            problems.report(f"{vol_path}: has shape {vol.shape}; expected a 3-D volume")
            continue
        if seg.shape != vol.shape:
            problems.report(
                f"{seg_path}: segmentation has shape {seg.shape} but {vol_path.name} has "
                f"{vol.shape}; expected the same shape"
            )
            continue
        labels = np.unique(seg)
        if (labels < 0).any() or not np.allclose(labels, np.round(labels)):
            problems.report(
                f"{seg_path}: segmentation has values {_list(labels)}; expected integer labels "
                f"(0 = background, > 0 = prostate)"
            )
            continue
        organ = seg > 0
        zs = np.flatnonzero(organ.sum(axis=(0, 1)))
        if len(zs) == 0:
            problems.report(
                f"{seg_path}: no slice contains the prostate; expected a non-empty segmentation"
            )
            continue
        norm = _normalise_volume(vol)
        imgs = np.stack([_to_square(norm[:, :, z].T, size, cv2.INTER_AREA) for z in zs])[:, None]
        masks = np.stack(
            [_to_square(organ[:, :, z].T.astype(np.uint8), size, cv2.INTER_NEAREST) for z in zs]
        )[:, None]
        raw = {
            "height": vol.shape[1],
            "width": vol.shape[0],
            "depth": vol.shape[2],
            **{k: v for k, v in _raw_stats(vol).items() if k not in ("height", "width")},
        }
        cases.append(Case(name, None, imgs, masks, raw))
    for name, seg_path in sorted(segs.items()):
        problems.report(
            f"{seg_path}: segmentation without a volume; expected {site_dir / (name + '.nii.gz')}"
        )
    return Read(cases, problems.found, files)


READERS: dict[str, Callable[[Path, int, Problems, str], Read]] = {
    "folder": read_folder,
    "prostate": read_prostate,
    "fundus": read_fundus,
}


def split_cases(
    cases: list[Case], test_fraction: float, seed: int, site_dir: Path
) -> tuple[list[Case], list[Case]]:
    """The layout's own train/test folders when it has them, else a seeded split by case."""
    if any(c.split for c in cases):
        train = [c for c in cases if c.split != "test"]
        test = [c for c in cases if c.split == "test"]
    else:
        rng = numpy_rng(seed)
        idx = rng.permutation(len(cases))
        n_test = min(len(cases) - 1, max(1, int(round(test_fraction * len(cases)))))
        test = [cases[i] for i in sorted(idx[:n_test])]
        train = [cases[i] for i in sorted(idx[n_test:])]
    if not train or not test:
        which = "train" if not train else "test"
        raise DataError(
            f"{site_dir}: no {which} cases ({len(cases)} cases in all); expected at least one "
            f"train and one test case"
        )
    return train, test


def read_site(
    kind: str, site_dir: Path, size: int, target: str = "auto", collect: bool = False
) -> Read:
    """Read one site folder with the reader of ``kind``; an empty site is an error."""
    if kind not in READERS:
        raise DataError(f"unknown data layout {kind!r}; expected one of {', '.join(READERS)}")
    if not site_dir.is_dir():
        raise DataError(f"{site_dir}: site folder missing")
    problems = Problems(collect=collect)
    read = READERS[kind](site_dir, size, problems, target)
    if not read.cases:
        problems.report(
            f"{site_dir}: empty site; expected at least two readable cases in the {kind} layout"
        )
    return read


def stack(cases: list[Case]) -> tuple[np.ndarray, np.ndarray]:
    channels = {c.images.shape[1] for c in cases}
    if len(channels) > 1:
        names = {c.images.shape[1]: c.name for c in cases}
        raise DataError(
            f"cases with different channel counts: {names}; expected one count per site"
        )
    return np.concatenate([c.images for c in cases]), np.concatenate([c.masks for c in cases])
