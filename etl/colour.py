"""Colour: JPEG's YCbCr arithmetic shared by the codec and the mean image (numpy only)."""

from __future__ import annotations

import numpy as np


def chroma_shape(height: int, width: int) -> tuple[int, int]:
    """(rows, columns) of a 4:2:0 chroma plane for a height x width image."""
    return -(-height // 2), -(-width // 2)


def ycc_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """JFIF's YCbCr -> RGB on float arrays of one size, without clamping (linear, so it applies to sums)."""
    cb, cr = cb - 128.0, cr - 128.0
    return np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
