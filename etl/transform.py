"""Transform: DIGITS' resize modes (squash, crop, fill, half_crop) with an antialiased, cheap resize."""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

from etl.codec import Planes, scaled_pixels


class Geometry(NamedTuple):
    """How one source size becomes the target: resize to (resize_w, resize_h), then crop or pad."""

    resize_w: int
    resize_h: int
    crop_x: int  # offset of the kept window in the resized image (crop, half_crop)
    crop_y: int
    pad_x: int  # noise columns on each side (fill, half_crop)
    pad_y: int  # noise rows on each side


def plan_geometry(src_w: int, src_h: int, width: int, height: int, mode: str) -> Geometry:
    """The same arithmetic as DIGITS' digits.utils.image.resize_image, for each mode."""
    if mode == "squash" or (src_w, src_h) == (width, height):
        return Geometry(width, height, 0, 0, 0, 0)
    wr, hr = src_w / width, src_h / height
    if mode == "crop":
        if wr > hr:
            rw, rh = int(round(src_w / hr)), height
            return Geometry(rw, rh, int(round((rw - width) / 2.0)), 0, 0, 0)
        rw, rh = width, int(round(src_h / wr))
        return Geometry(rw, rh, 0, int(round((rh - height) / 2.0)), 0, 0)
    if mode == "fill":
        if wr > hr:
            rw, rh = width, int(round(src_h / wr))
            rh += (height - rh) % 2
        else:
            rw, rh = int(round(src_w / hr)), height
            rw += (width - rw) % 2
        return Geometry(rw, rh, 0, 0, (width - rw) // 2, (height - rh) // 2)
    if mode == "half_crop":
        ratio = (wr + hr) / 2.0
        rw, rh = int(round(src_w / ratio)), int(round(src_h / ratio))
        if wr > hr:
            rh += (height - rh) % 2
            return Geometry(rw, rh, int(round((rw - width) / 2.0)), 0, 0, (height - rh) // 2)
        rw += (width - rw) % 2
        return Geometry(rw, rh, 0, int(round((rh - height) / 2.0)), (width - rw) // 2, 0)
    raise ValueError(f"unknown resize mode {mode!r}")


MAX_BILINEAR_SHRINK = 2.5  # more aliases; less costs 0.1 ms per ImageNet image with no PSNR gain (etl bench)


def box_factors(src_w: float, src_h: float, width: int, height: int,
                resize_filter: str = "antialias") -> tuple[int, int]:
    """How many times the target the bilinear step makes, per axis, before the box average shrinks it back.

    Powers of two, so the box average is an exact integer-ratio INTER_AREA (the fast one). The caffe filter
    is the bilinear step alone, straight to the target: cv::resize(INTER_LINEAR), as convert_imageset."""
    if resize_filter == "caffe" or (src_w <= width and src_h <= height):
        return 1, 1
    fx, fy = 2, 2
    while src_w > MAX_BILINEAR_SHRINK * fx * width:
        fx *= 2
    while src_h > MAX_BILINEAR_SHRINK * fy * height:
        fy *= 2
    return fx, fy


def resize(pixels: np.ndarray, width: int, height: int, resize_filter: str = "antialias") -> np.ndarray:
    """Antialiased downscale: bilinear to a power-of-two multiple of the target, then an exact box average.

    cv2's INTER_AREA is slow for non-integer ratios and INTER_LINEAR alone aliases; this pair
    costs about half of INTER_AREA and scores above Pillow's BILINEAR in PSNR (docs/benchmarks.md,
    "Measured by hand").
    Works on (H, W, C) pixels and on single (H, W) planes.
    """
    src_h, src_w = pixels.shape[:2]
    if (src_w, src_h) == (width, height):
        return pixels
    fx, fy = box_factors(src_w, src_h, width, height, resize_filter)
    out = cv2.resize(pixels, (fx * width, fy * height), interpolation=cv2.INTER_LINEAR)
    return _box(out, width, height).reshape((height, width) + pixels.shape[2:])  # cv2 drops a single channel axis


def _box(step: np.ndarray, width: int, height: int) -> np.ndarray:
    if step.shape[:2] == (height, width):
        return step
    return cv2.resize(step, (width, height), interpolation=cv2.INTER_AREA)


def fit_planes(planes: Planes, geo: Geometry, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop and resize a JPEG's YCbCr planes to the target: Y at width x height, chroma at half size (4:2:0).

    Only for geometries without padding (squash, crop). Chroma is resized straight from its own
    plane, which is what the encoder's RGB -> YCbCr and 2x2 downsampling would produce, without
    ever upsampling it.
    """
    y = _crop_resize(planes.y, planes.covered_w, planes.covered_h, geo, width, height, 1)
    scale_x = planes.cb.shape[1] / planes.y.shape[1]  # chroma samples per luma sample (1, 1/2 or 1/4)
    scale_y = planes.cb.shape[0] / planes.y.shape[0]
    chroma = [_crop_resize(p, planes.covered_w * scale_x, planes.covered_h * scale_y, geo, width, height, 2)
              for p in (planes.cb, planes.cr)]
    return y, chroma[0], chroma[1]


def _crop_resize(plane: np.ndarray, covered_w: float, covered_h: float, geo: Geometry, width: int, height: int,
                 subsample: int) -> np.ndarray:
    """The window of the resized picture that the target keeps, in this plane's pixels, resized to the
    target's size in this plane (divided by subsample, rounded up)."""
    out_w, out_h = -(-width // subsample), -(-height // subsample)
    # An odd target's last chroma sample also covers one padding pixel past the edge, as in the encoder.
    window = kept_window(geo, covered_w, covered_h, out_w * subsample, out_h * subsample)
    return np.ascontiguousarray(resize_window(plane, window, out_w, out_h))


class Window(NamedTuple):
    """A rectangle of source pixels with fractional edges: [left, right) x [top, bottom)."""

    left: float
    top: float
    right: float
    bottom: float


def kept_window(geo: Geometry, covered_w: float, covered_h: float, keep_w: int, keep_h: int) -> Window:
    """Where the kept part of the resized picture lies in a source that shows the picture on covered_w x covered_h."""
    # (crop_x + keep_w) * (covered_w / resize_w) can exceed covered_w by float error for a full window (338 of
    # 3 x 2,999 widths): the antialiased squash then pads a hair of edge. Computing it exactly changes the default
    # output's bytes, which must stay those of earlier releases; the caffe filter's squash skips the window instead.
    sx, sy = covered_w / geo.resize_w, covered_h / geo.resize_h
    return Window(geo.crop_x * sx, geo.crop_y * sy, (geo.crop_x + keep_w) * sx, (geo.crop_y + keep_h) * sy)


def resize_window(pixels: np.ndarray, win: Window, width: int, height: int,
                  resize_filter: str = "antialias") -> np.ndarray:
    """resize() of an exact, possibly fractional, window of pixels.

    Whole-pixel windows are cut and resized. Otherwise the whole pixels around the window are resized
    a little larger and the window cut from that, so its edges land within half a pixel of the first
    resize step (a quarter of an output pixel when downscaling) instead of half a source pixel.
    """
    x0, y0 = math.floor(win.left), math.floor(win.top)
    x1, y1 = max(math.ceil(win.right), x0 + 1), max(math.ceil(win.bottom), y0 + 1)
    whole = pixels[y0:y1, x0:x1]
    beyond_x, beyond_y = x1 - x0 - whole.shape[1], y1 - y0 - whole.shape[0]
    if beyond_x > 0 or beyond_y > 0:  # a window past the edge (an odd size's padding) repeats the edge
        pad = ((0, max(0, beyond_y)), (0, max(0, beyond_x))) + ((0, 0),) * (pixels.ndim - 2)
        whole = np.pad(whole, pad, mode="edge")
    if (x0, y0, x1, y1) == tuple(win):
        return resize(whole, width, height, resize_filter)
    fx, fy = box_factors(win.right - win.left, win.bottom - win.top, width, height, resize_filter)
    step_w, step_h = fx * width, fy * height
    sx, sy = step_w / (win.right - win.left), step_h / (win.bottom - win.top)
    big_w, big_h = max(step_w, round((x1 - x0) * sx)), max(step_h, round((y1 - y0) * sy))
    ox, oy = min(round((win.left - x0) * sx), big_w - step_w), min(round((win.top - y0) * sy), big_h - step_h)
    step = cv2.resize(whole, (big_w, big_h), interpolation=cv2.INTER_LINEAR)[oy:oy + step_h, ox:ox + step_w]
    step = _box(step, width, height)
    return step.reshape((height, width) + pixels.shape[2:])


def noise_rng(seed: int, split_code: int, index: int) -> np.random.Generator:
    """Noise for one image depends only on the seed and its place, not on which worker runs it."""
    return np.random.default_rng([seed, split_code, index])


def apply_geometry(pixels: np.ndarray, geo: Geometry, width: int, height: int,
                   rng: np.random.Generator | None, resize_filter: str = "antialias") -> np.ndarray:
    """Crop, resize, and pad the short side with random noise.

    The crop is taken from the source before resizing: the same picture as resizing first, without
    ever allocating the full resized image (a 1x30000 strip in crop mode would need gigabytes).
    """
    if resize_filter == "caffe" and geo == (width, height, 0, 0, 0, 0):
        # Caffe's squash: the whole image, exactly (a window's float edges can land a hair past the last pixel)
        return np.ascontiguousarray(resize(pixels, width, height, resize_filter))
    src_h, src_w = pixels.shape[:2]  # may be DCT-scaled: the geometry is in resized pixels
    keep_w, keep_h = min(width, geo.resize_w), min(height, geo.resize_h)
    out = resize_window(pixels, kept_window(geo, src_w, src_h, keep_w, keep_h), keep_w, keep_h, resize_filter)
    if geo.pad_x or geo.pad_y:
        out = _pad_with_noise(out, geo, rng or np.random.default_rng())
    return np.ascontiguousarray(out)


def _pad_with_noise(img: np.ndarray, geo: Geometry, rng: np.random.Generator) -> np.ndarray:
    if geo.pad_y:
        shape = (geo.pad_y,) + img.shape[1:]
        img = np.concatenate([_noise(rng, shape), img, _noise(rng, shape)], axis=0)
    if geo.pad_x:
        shape = (img.shape[0], geo.pad_x) + img.shape[2:]
        img = np.concatenate([_noise(rng, shape), img, _noise(rng, shape)], axis=1)
    return img


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 255, size=shape, dtype=np.uint8)


DCT_MARGIN = 1.0  # the scaled decode must still cover the resize target this many times over


def dct_scale(src_w: int, src_h: int, geo: Geometry, budget: int | None = None) -> int:
    """Largest JPEG DCT downscale (8, 4, 2 or 1) whose output still covers the resize target; where that
    decode would exceed `budget` pixels (codec.decode_budget), the finest scale within it instead, covering
    or not (8 if none is: the codec then refuses the image).

    libjpeg-turbo 2.1 only has fast scaled IDCTs for 1/2, 1/4 and 1/8. Measured on 250 real
    ImageNet JPEGs (etl bench kernels): a margin of 1x costs 1.28 ms per image at 33.21 dB PSNR,
    a margin of 2x 1.36-1.39 ms at 33.45 dB; Pillow's kernel scores 32.95 dB. The faster rule
    keeps the quality above DIGITS' own, which is the bar.
    """
    covering = 1
    for denom in (8, 4, 2):
        if src_w // denom >= DCT_MARGIN * geo.resize_w and src_h // denom >= DCT_MARGIN * geo.resize_h:
            covering = denom
            break
    if budget is None or scaled_pixels(src_w, src_h, covering) <= budget:
        return covering
    return next((d for d in (2, 4, 8) if d > covering and scaled_pixels(src_w, src_h, d) <= budget), 8)
