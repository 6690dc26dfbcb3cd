"""Image tiles with mask outlines, for the PNG previews of site data and of replay."""

from __future__ import annotations

import numpy as np


def outlined_tile(image: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """A BGR ``size`` x ``size`` tile of a [0, 1] grey image with the mask's outline in red."""
    import cv2

    img = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    m = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (0, 0, 255), 1)
    return rgb


def label(tile: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` into the tile's top-left corner (in place) and return it."""
    import cv2

    cv2.putText(tile, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
    return tile


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a BGR image, so the caller writes them through a Python file object."""
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("could not encode the image as PNG")
    return buf.tobytes()
