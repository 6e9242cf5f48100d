"""EXIF orientation: the tag read from a JPEG's APP1 Exif segment, and the flips and turns that make it upright."""

from __future__ import annotations

import numpy as np

from etl.codec import header_segments

ORIENTATION_TAG = 0x0112
TRANSPOSING = frozenset((5, 6, 7, 8))  # the orientations whose upright picture swaps width and height
_APP1 = 0xE1
_EXIF_HEADER = b"Exif\x00\x00"


def exif_orientation(data: bytes) -> int:
    """A JPEG's EXIF orientation, 1 to 8; 1 (as stored) for no tag, a value out of range or a damaged header.

    Walks the marker segments before the first scan: no decode, and nothing past the headers is read."""
    if data[:2] != b"\xff\xd8":
        return 1
    for pos, marker in header_segments(data):
        if marker == _APP1 and data[pos + 4:pos + 10] == _EXIF_HEADER:
            return _tiff_orientation(data[pos + 10:pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")])
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """The orientation entry of the TIFF structure's first IFD (IFD0, the main image's)."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)  # type: ignore[arg-type]
    count = int.from_bytes(tiff[ifd:ifd + 2], order)  # type: ignore[arg-type]
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if int.from_bytes(tiff[entry:entry + 2], order) == ORIENTATION_TAG:  # type: ignore[arg-type]
            value = int.from_bytes(tiff[entry + 8:entry + 10], order)  # type: ignore[arg-type]  # a SHORT
            return value if 1 <= value <= 8 else 1
    return 1


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The stored (H, W, ...) pixels turned as the tag says, so the picture stands as it was taken (as Pillow's
    ImageOps.exif_transpose); a view where numpy can make one."""
    if orientation in TRANSPOSING:
        pixels = pixels.swapaxes(0, 1)  # 5 is the transpose; 6, 7 and 8 are it and a flip
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    return pixels
