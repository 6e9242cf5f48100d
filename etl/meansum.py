"""Mean sums: the integer pixel sums workers add up (RGB pixels or YCbCr planes), laid out in one vector."""

from __future__ import annotations

from itertools import accumulate
from typing import NamedTuple

import numpy as np

from etl.colour import chroma_shape


def mean_layout(width: int, height: int, channels: int, split: str) -> SumLayout | None:
    """The train split's images make the mean image; the others are not summed."""
    return SumLayout(width, height, channels) if split == "train" else None


class SumLayout(NamedTuple):
    """Where each sum lives in one flat integer vector (so it crosses pipes and checkpoints as one array).

    [ pixels H*W*C | Y H*W | Cb h*w | Cr h*w | how many images were summed as planes ]
    Planes are summed as decoded (the YCbCr -> RGB conversion is linear, so it is applied once, to the
    sums, when the mean is written): exact integers, whatever the chunking. The one difference from
    converting each image: a decoder clamps out-of-range pixels to 0..255, which a sum cannot (it
    matters only for saturated colours, by a level or so on a dataset's mean).
    """

    width: int
    height: int
    channels: int

    @property
    def chroma(self) -> tuple[int, int]:
        return chroma_shape(self.height, self.width)

    def _bounds(self) -> list[int]:
        ch, cw = self.chroma
        sizes = [self.height * self.width * self.channels, self.height * self.width, ch * cw, ch * cw, 1]
        return list(accumulate(sizes, initial=0))  # plain ints: this runs for every image summed

    @property
    def size(self) -> int:
        return self._bounds()[-1]

    def zeros(self, dtype: type = np.uint32) -> np.ndarray:
        return np.zeros(self.size, dtype=dtype)

    @staticmethod
    def chunk_dtype(images: int) -> type:
        """The smallest integer type that cannot overflow summing this many 8-bit images."""
        return np.uint16 if images * 255 <= np.iinfo(np.uint16).max else np.uint32

    def trim(self, vec: np.ndarray) -> tuple[np.ndarray, int]:
        """(tail, offset): the vector without its pixel part when no image was summed as pixels, which
        is the usual case (JPEGs go as planes): a chunk's sum then crosses the pipes at a fifth of the size."""
        start = self._bounds()[1]
        return (vec[start:].copy(), start) if not vec[:start].any() else (vec, 0)

    def from_pixel_sum(self, pixel_sum: np.ndarray) -> np.ndarray:
        """A vector holding an (H, W, C) pixel sum: how etl 0.1 checkpoints stored the sum, resumed by 0.2."""
        vec = self.zeros(np.int64)
        self.pixels(vec)[...] = pixel_sum
        return vec

    def pixels(self, vec: np.ndarray) -> np.ndarray:
        b = self._bounds()
        return vec[b[0]:b[1]].reshape(self.height, self.width, self.channels)

    def planes(self, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b, ch, cw = self._bounds(), *self.chroma
        return (vec[b[1]:b[2]].reshape(self.height, self.width), vec[b[2]:b[3]].reshape(ch, cw),
                vec[b[3]:b[4]].reshape(ch, cw))

    def add_pixels(self, vec: np.ndarray, pixels: np.ndarray) -> None:
        target = self.pixels(vec)
        np.add(target, pixels, out=target)

    def add_planes(self, vec: np.ndarray, y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> None:
        for target, plane in zip(self.planes(vec), (y, cb, cr), strict=True):
            np.add(target, plane, out=target)
        vec[-1] += 1
