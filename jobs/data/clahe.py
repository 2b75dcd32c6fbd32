"""Image decoding and CLAHE preprocessing.

CLAHE (contrast-limited adaptive histogram equalisation) runs on the 8-bit grayscale film at its
native resolution, where its tiles see the anatomy at the scale the parameters were chosen for;
the result is then resized with INTER_AREA (the anti-aliasing choice for downsampling).
"""

from __future__ import annotations

import cv2
import numpy as np

from jobs.errors import DatasetError

# OpenCV prints its own warning for a truncated PNG; our error says which file and what to do.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def decode_gray(data: bytes, where: str) -> np.ndarray:
    """Decode a PNG (grayscale, RGB or RGBA; 8 or 16 bit) to an 8-bit grayscale array."""
    if not data:  # OpenCV asserts on an empty buffer (cv2.error) rather than returning None
        raise DatasetError(f"{where}: an empty file (0 bytes), not an image; re-extract it or delete it")
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None:
        raise DatasetError(f"{where}: not a readable image (corrupt or truncated PNG); re-extract it or delete it")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 3:
        code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(img.shape[2])
        if code is None:
            raise DatasetError(f"{where}: unsupported image with {img.shape[2]} channels")
        img = cv2.cvtColor(img, code)
    return img


def clahe(gray: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """OpenCV's CLAHE with a square tile grid."""
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid)).apply(gray)


def resize(gray: np.ndarray, size: int) -> np.ndarray:
    """An INTER_AREA resize to ``size`` x ``size``: what a study without CLAHE stores."""
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)


def preprocess(gray: np.ndarray, size: int, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """CLAHE at native resolution, then an INTER_AREA resize to ``size`` x ``size``."""
    return resize(clahe(gray, clip_limit, tile_grid), size)
