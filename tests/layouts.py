"""Small data sets in the user layouts, generated on the fly (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def blob_case(
    rng: np.random.Generator, h: int, w: int, channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """An image (uint8, grey or BGR) with a bright ellipse, and its binary mask (0/1)."""
    mask = np.zeros((h, w), np.uint8)
    centre = (int(rng.integers(w // 3, 2 * w // 3)), int(rng.integers(h // 3, 2 * h // 3)))
    axes = (int(rng.integers(w // 8, w // 4)), int(rng.integers(h // 8, h // 4)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    img = 60 + 120 * mask.astype(np.float32) + rng.normal(0, 10, (h, w))
    img = np.clip(img, 0, 255).astype(np.uint8)
    if channels == 3:
        img = np.stack([img, (img * 0.8).astype(np.uint8), (img * 0.5).astype(np.uint8)], -1)
    return img, mask


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr), path


def make_folder(
    root: Path,
    sites: tuple[str, ...] = ("siteA", "siteB"),
    n: int = 8,
    size: int = 40,
    seed: int = 0,
    split_site: str | None = "siteB",
) -> Path:
    """``SITE/images/*.png`` + ``SITE/masks/*.png`` (0/255); ``split_site`` uses train/ and
    test/."""
    rng = np.random.default_rng(seed)
    for site in sites:
        for i in range(n):
            img, mask = blob_case(rng, size, size + 8)
            sub = root / site
            if site == split_site:
                sub = sub / ("test" if i % 4 == 3 else "train")
            write_png(sub / "images" / f"case_{i:03d}.png", img)
            write_png(sub / "masks" / f"case_{i:03d}.png", mask * 255)
    return root


def make_prostate(
    root: Path, sites: tuple[str, ...] = ("BIDMC", "HK"), cases: int = 4, seed: int = 0
) -> Path:
    """``SITE/CaseXX.nii.gz`` + ``CaseXX_segmentation.nii.gz`` (capitalised at the second site)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    for k, site in enumerate(sites):
        folder = root / site
        folder.mkdir(parents=True, exist_ok=True)
        for c in range(cases):
            h, w, d = 48, 40, 10
            vol = rng.normal(300, 40, (h, w, d)).astype(np.float32)
            seg = np.zeros((h, w, d), np.uint8)
            yy, xx = np.mgrid[0:h, 0:w]
            for z in range(2, 8):  # the organ spans six of the ten slices
                r = 6 + z % 3
                inside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < r * r
                seg[inside, z] = 1
                vol[inside, z] += 500
            affine = np.diag([0.6, 0.6, 3.0, 1.0])
            nib.save(nib.Nifti1Image(vol, affine), str(folder / f"Case{c:02d}.nii.gz"))
            seg_name = f"Case{c:02d}_{'Segmentation' if k % 2 else 'segmentation'}.nii.gz"
            nib.save(nib.Nifti1Image(seg, affine), str(folder / seg_name))
    return root


def make_fundus(root: Path, domains: int = 2, n: int = 6, size: int = 48, seed: int = 0) -> Path:
    """``DomainN/{train,test}/ROIs/{image,mask}/*.png``, RGB images, masks 0 cup / 128 disc / 255
    bg."""
    rng = np.random.default_rng(seed)
    for d in range(1, domains + 1):
        for i in range(n):
            split = "test" if i % 3 == 2 else "train"
            base = root / f"Domain{d}" / split / "ROIs"
            img, disc = blob_case(rng, size, size, channels=3)
            mask = np.full((size, size), 255, np.uint8)
            mask[disc > 0] = 128
            ys, xs = np.nonzero(disc)
            cy, cx = int(ys.mean()), int(xs.mean())
            mask[max(0, cy - 3) : cy + 3, max(0, cx - 3) : cx + 3] = 0  # the cup inside the disc
            write_png(base / "image" / f"g{i:04d}.png", img)
            write_png(base / "mask" / f"g{i:04d}.png", mask)
    return root
