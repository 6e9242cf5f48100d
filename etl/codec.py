"""Codec: decode input images to pixels or YCbCr planes (libjpeg-turbo, Pillow as fallback); encode the output."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageFile
from turbojpeg import (
    TJFLAG_ACCURATEDCT,
    TJFLAG_STOPONWARNING,
    TJPF_GRAY,
    TJPF_RGB,
    TJSAMP_420,
    TJSAMP_GRAY,
    TJCS_YCbCr,
    TurboJPEG,
)

from etl.colour import chroma_shape

JPEG_MAGIC = b"\xff\xd8"


class BadImage(Exception):
    """The file cannot be turned into an image; the message is the reason reported."""


class Decoded(NamedTuple):
    """Pixels (H, W, channels) uint8, the source size before any DCT scaling, and a decoder warning."""

    pixels: np.ndarray
    src_w: int
    src_h: int
    warning: str | None


class Planes(NamedTuple):
    """A JPEG's own YCbCr planes, as decoded (no colour conversion, no chroma upsampling).

    covered_w/covered_h: how many Y-plane pixels hold the picture (libjpeg-turbo pads the planes to
    whole chroma samples). The chroma planes cover the same area at their own resolution.
    """

    y: np.ndarray
    cb: np.ndarray
    cr: np.ndarray
    covered_w: int
    covered_h: int
    src_w: int
    src_h: int


# Given the source size, how much the JPEG decoder may shrink by DCT scaling (1, 2, 4 or 8).
ScaleChooser = Callable[[int, int], int]


class Codec:
    """One per worker process: holds the TurboJPEG handle (its library lookup costs ~2.5 ms)."""

    def __init__(self, channels: int, max_pixels: int) -> None:
        self.tj = TurboJPEG()
        self.channels = channels
        self.max_pixels = max_pixels
        self.pixel_format = TJPF_RGB if channels == 3 else TJPF_GRAY
        Image.MAX_IMAGE_PIXELS = None  # our own limit, checked before decoding, applies instead

    def decode(self, data: bytes, choose_scale: ScaleChooser) -> Decoded:
        if not data:
            raise BadImage("empty file (0 bytes)")
        if data.startswith(JPEG_MAGIC):
            decoded = self._decode_jpeg(data, choose_scale)
            if decoded is not None:
                return decoded
        return self._decode_pillow(data, warning=None)

    def decode_planes(self, data: bytes, choose_scale: ScaleChooser) -> Planes | None:
        """YCbCr planes of a plain colour or gray JPEG that decodes without a warning; None otherwise.

        Skipping the decoder's colour conversion and chroma upsampling, and the encoder's way back,
        saves about a tenth of the kernel; None sends the file to decode(), which handles the rest.
        """
        if not data.startswith(JPEG_MAGIC):
            return None
        with libjpeg_warnings() as caught:
            try:
                width, height, subsample, colorspace = self.tj.decode_header(data)
                if caught or not width or not height:
                    return None
                self._check_size(width, height)
                denom = choose_scale(width, height)
                scale = (1, denom) if denom > 1 else None
                if subsample == TJSAMP_GRAY:  # PyTurboJPEG's plane sizes are wrong for gray: take Y as gray
                    y = self.tj.decode(data, pixel_format=TJPF_GRAY, scaling_factor=scale,
                                       flags=TJFLAG_STOPONWARNING)[:, :, 0]
                    cb = cr = np.full(chroma_shape(*y.shape), 128, np.uint8)
                elif colorspace == TJCS_YCbCr:
                    y, cb, cr = self.tj.decode_to_yuv_planes(data, scaling_factor=scale, flags=TJFLAG_STOPONWARNING)
                else:
                    return None  # RGB-coded, CMYK, YCCK: the pixel path converts them
            except OSError:
                return None
        if caught:
            return None
        return Planes(y, cb, cr, -(-width // denom), -(-height // denom), width, height)

    def encode_planes(self, y: np.ndarray, cb: np.ndarray, cr: np.ndarray, quality: int) -> bytes:
        """JPEG 4:2:0 from planes sized (h, w) and ((h+1)//2, (w+1)//2).

        libjpeg-turbo's YUV buffer: the Y plane padded to whole chroma samples (even sizes), then each
        plane's rows padded to 4 bytes; padding repeats the edge, as the encoder itself would.
        """
        height, width = y.shape
        y = _pad_plane(y, height + height % 2, width + width % 2)
        rows = [_pad_plane(p, p.shape[0], -(-p.shape[1] // 4) * 4) for p in (y, cb, cr)]
        return self.tj.encode_from_yuv(np.concatenate([r.ravel() for r in rows]), height, width,
                                       quality=quality, jpeg_subsample=TJSAMP_420, flags=TJFLAG_ACCURATEDCT)

    def _check_size(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise BadImage(f"image claims {width}x{height} pixels, over the limit of {self.max_pixels} (--max-pixels)")
        if width < 1 or height < 1:
            raise BadImage(f"image claims an empty size {width}x{height}")

    def _decode_jpeg(self, data: bytes, choose_scale: ScaleChooser) -> Decoded | None:
        """libjpeg-turbo, stopping at the first warning; None sends the file to Pillow."""
        with libjpeg_warnings() as caught:
            try:
                width, height, _, _ = self.tj.decode_header(data)
            except OSError:
                return None  # unusual sampling factors or a damaged header: Pillow may still read it
            if caught or not width or not height:
                return None
            self._check_size(width, height)
            denom = choose_scale(width, height)
            try:
                pixels = self.tj.decode(data, pixel_format=self.pixel_format,
                                        scaling_factor=(1, denom) if denom > 1 else None,
                                        flags=TJFLAG_STOPONWARNING)
            except OSError:
                return None  # CMYK/YCCK ("Unsupported color conversion request") and the like
        if caught:
            # PyTurboJPEG 1.x can report a fatal error after a warning as a mere warning and hand
            # back a half-written array: never trust it, decode again with Pillow.
            if not has_scan_data(data):
                raise BadImage("no image data: the file ends right after its JPEG header")
            return self._decode_pillow(data, warning=str(caught[0].message))
        return Decoded(pixels, width, height, None)

    def _decode_pillow(self, data: bytes, warning: str | None) -> Decoded:
        """Pillow for what libjpeg-turbo refused; a truncated file passes only with a JPEG warning."""
        ImageFile.LOAD_TRUNCATED_IMAGES = warning is not None
        try:
            with Image.open(io.BytesIO(data)) as im:
                self._check_size(*im.size)
                im.load()
                pixels = self._to_array(im)
                return Decoded(pixels, im.size[0], im.size[1], warning)
        except BadImage:
            raise
        except Image.UnidentifiedImageError:
            raise BadImage(f"not an image ({_sniff(data)})") from None
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            raise BadImage(f"cannot decode: {exc}") from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False

    def _to_array(self, im: Image.Image) -> np.ndarray:
        if im.mode.startswith("I;16") or im.mode == "I":
            im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, rgba)
        im = im.convert("RGB" if self.channels == 3 else "L")
        return np.asarray(im).reshape(im.size[1], im.size[0], self.channels)

    def encode(self, pixels: np.ndarray, encoding: str, quality: int) -> bytes:
        """Encoded JPEG/PNG bytes from RGB (or gray) pixels, or raw CHW BGR bytes for 'none'."""
        if encoding == "jpg":
            sub = TJSAMP_420 if self.channels == 3 else TJSAMP_GRAY
            # ACCURATEDCT: below q96 TurboJPEG would use the fast DCT; this matches Pillow's output.
            return self.tj.encode(pixels, quality=quality, pixel_format=self.pixel_format,
                                  jpeg_subsample=sub, flags=TJFLAG_ACCURATEDCT)
        if encoding == "png":
            ok, buf = cv2.imencode(".png", to_bgr(pixels))
            if not ok:
                raise BadImage("PNG encoding failed")
            return buf.tobytes()
        return chw_bgr_bytes(pixels)


@contextmanager
def libjpeg_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record PyTurboJPEG's warnings (libjpeg's) for the block, not others that happen to fire meanwhile
    (a ResourceWarning from garbage collection must not mark an image as damaged)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        # By category too: a ResourceWarning from a collection that happens to run inside turbojpeg's
        # code is attributed to that module (seen: it failed one image in a hundred test runs).
        warnings.filterwarnings("always", category=UserWarning, module="turbojpeg")
        yield caught


def _pad_plane(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    rows, cols = height - plane.shape[0], width - plane.shape[1]
    return np.pad(plane, ((0, rows), (0, cols)), mode="edge") if rows or cols else plane


def to_bgr(pixels: np.ndarray) -> np.ndarray:
    return pixels[:, :, ::-1] if pixels.shape[2] == 3 else pixels[:, :, 0]


def chw_bgr_bytes(pixels: np.ndarray) -> bytes:
    """Caffe's raw layout: channel planes, blue first."""
    planes = pixels[:, :, ::-1] if pixels.shape[2] == 3 else pixels
    return np.ascontiguousarray(planes.transpose(2, 0, 1)).tobytes()


def has_scan_data(data: bytes, minimum: int = 16) -> bool:
    """Whether any entropy-coded data follows the first SOS segment (a file cut after its header has none)."""
    sos = data.find(b"\xff\xda")
    if sos < 0 or sos + 4 > len(data):
        return False
    header = int.from_bytes(data[sos + 2: sos + 4], "big")
    return len(data) - (sos + 2 + header) >= minimum


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
        return "HTML/XML text"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:256]):
        return "plain text"
    return f"unknown format, starts {data[:4].hex()}"
