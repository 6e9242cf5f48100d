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
from etl.datumpixels import JPEG_MAGIC

# What one worker decodes at most, in pixels, unless the output itself is larger (decode_budget): ordinary
# photographs stay below it; a JPEG above it is decoded at a smaller DCT scale, anything else is refused.
DECODE_BUDGET_PIXELS = 1 << 26  # 8192 x 8192
WHOLE_COST = 2  # a JPEG that libjpeg holds whole (held_whole) counts twice: ~6 bytes of coefficients per pixel
BAND_PIXELS = 1 << 20  # the Pillow path converts an image this many pixels at a time


class BadImage(Exception):
    """The file cannot be turned into an image; the message is the reason reported."""


class Decoded(NamedTuple):
    """Pixels (H, W, channels) uint8, the source size before any DCT scaling, a decoder warning, and what
    colour conversion the pixels needed beyond RGB or grey (colour_conversion), for the run's note."""

    pixels: np.ndarray
    src_w: int
    src_h: int
    warning: str | None
    colour: str | None = None


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


def decode_budget(width: int, height: int) -> int:
    """Pixels one worker may decode for an output of width x height: DECODE_BUDGET_PIXELS, or four times
    the output where that is more (a decode that covers the output needs up to twice each side)."""
    return max(DECODE_BUDGET_PIXELS, 4 * width * height)


def scaled_pixels(width: int, height: int, denom: int) -> int:
    """Pixels of a JPEG decoded at 1/denom (libjpeg rounds each side up)."""
    return -(-width // denom) * -(-height // denom)


def held_whole(data: bytes) -> bool:
    """Whether libjpeg keeps the whole image's DCT coefficients while decoding this JPEG, whatever the
    scale: progressive (and lossless or arithmetic progressive) frames, and sequential ones whose first
    scan does not carry every component. Read from the markers before the first scan."""
    components = 0
    for pos, marker in header_segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker in (0xC2, 0xC6, 0xCA, 0xCE):
                return True
            components = data[pos + 9] if pos + 9 < len(data) else 0
        elif marker == 0xDA:
            return pos + 4 < len(data) and data[pos + 4] < components
    return False


STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RSTn, SOI, EOI: no length field


def header_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """(offset, marker) of each JPEG marker segment from SOI's end up to and including the first start of
    scan (SOS), walking the segments' lengths: the bytes FF DA inside an APPn segment (an ICC profile, EXIF
    data) are not a scan. Bytes between segments are skipped up to the next FF, as libjpeg does."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        yield pos, marker
        if marker == 0xDA:
            return
        pos += 2 if marker in STANDALONE_MARKERS else 2 + int.from_bytes(data[pos + 2:pos + 4], "big")


def first_scan(data: bytes) -> int:
    """The offset of a JPEG's first SOS marker, found by walking its segments; -1 when it has none."""
    return next((pos for pos, marker in header_segments(data) if marker == 0xDA), -1)


class Codec:
    """One per worker process: holds the TurboJPEG handle (its library lookup costs ~2.5 ms)."""

    def __init__(self, channels: int, max_pixels: int, decode_pixels: int = DECODE_BUDGET_PIXELS) -> None:
        self.tj = TurboJPEG()
        self.channels = channels
        self.max_pixels = max_pixels
        self.decode_pixels = decode_pixels  # the most pixels one decode may produce (decode_budget)
        self.pixel_format = TJPF_RGB if channels == 3 else TJPF_GRAY
        Image.MAX_IMAGE_PIXELS = None  # our own limit, checked before decoding, applies instead

    def decode(self, data: bytes, choose_scale: ScaleChooser) -> Decoded:
        if not data:
            raise BadImage("empty file (0 bytes)")
        if data.startswith(JPEG_MAGIC):
            decoded = self._decode_jpeg(data, choose_scale)
            if decoded is not None:
                return decoded
        return self._decode_pillow(data, None, choose_scale)

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
                self.check_claimed_size(width, height)
                denom = choose_scale(width, height)
                self._check_budget(data, width, height, denom)
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

    def check_claimed_size(self, width: int, height: int) -> None:
        """Refuse, before any allocation, a header that claims too many pixels (--max-pixels) or none."""
        if width * height > self.max_pixels:
            raise BadImage(f"image claims {width}x{height} pixels, over the limit of {self.max_pixels} (--max-pixels)")
        if width < 1 or height < 1:
            raise BadImage(f"image claims an empty size {width}x{height}")

    def _check_budget(self, data: bytes, width: int, height: int, denom: int) -> None:
        """Refuse a JPEG whose decode would hold more than the decode budget (decode_pixels)."""
        budget = self.decode_pixels
        if width * height * WHOLE_COST > budget and held_whole(data):
            raise BadImage(f"progressive JPEG of {width}x{height} pixels is over the decode budget of "
                           f"{budget // WHOLE_COST:,d} pixels per worker for such files (libjpeg holds them whole, at "
                           "any scale)")
        if scaled_pixels(width, height, denom) > budget:
            raise BadImage(f"JPEG of {width}x{height} pixels is over the decode budget of {budget:,d} pixels per "
                           "worker even at 1/8 scale")

    def _decode_jpeg(self, data: bytes, choose_scale: ScaleChooser) -> Decoded | None:
        """libjpeg-turbo, stopping at the first warning; None sends the file to Pillow."""
        with libjpeg_warnings() as caught:
            try:
                width, height, _, _ = self.tj.decode_header(data)
            except OSError:
                return None  # unusual sampling factors or a damaged header: Pillow may still read it
            if caught or not width or not height:
                return None
            self.check_claimed_size(width, height)
            denom = choose_scale(width, height)
            self._check_budget(data, width, height, denom)
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
            return self._decode_pillow(data, str(caught[0].message), choose_scale)
        return Decoded(pixels, width, height, None)

    def _decode_pillow(self, data: bytes, warning: str | None, choose_scale: ScaleChooser) -> Decoded:
        """Pillow for what libjpeg-turbo refused; a truncated file passes only with a JPEG warning."""
        ImageFile.LOAD_TRUNCATED_IMAGES = warning is not None
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                self.check_claimed_size(width, height)
                self._fit_budget(im, data, choose_scale)
                im.load()
                return Decoded(self._to_array(im), width, height, warning, colour_conversion(im))
        except BadImage:
            raise
        except Image.UnidentifiedImageError:
            raise BadImage(f"not an image ({_sniff(data)})") from None
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            raise BadImage(f"cannot decode: {exc}") from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False

    def _fit_budget(self, im: Image.Image, data: bytes, choose_scale: ScaleChooser) -> None:
        """Within the decode budget, nothing changes; above it a JPEG is decoded at the scale the chooser
        picks (Pillow's draft), and any other format is refused: it can only be decoded whole."""
        width, height = im.size
        if width * height <= self.decode_pixels:
            return
        if im.format not in ("JPEG", "MPO"):  # MPO: a JPEG with more pictures after the first
            raise BadImage(f"{im.format or 'image'} of {width}x{height} pixels is over the decode budget of "
                           f"{self.decode_pixels:,d} pixels per worker (only a JPEG can be decoded at a "
                           "smaller scale)")
        denom = choose_scale(width, height)
        self._check_budget(data, width, height, denom)
        im.draft(None, (width // denom, height // denom))

    def _to_array(self, im: Image.Image) -> np.ndarray:
        """(H, W, channels) uint8; a large image is converted in bands of rows, so that its converted copies
        (RGBA, the composite, RGB) exist one band at a time. Every conversion here is pixel by pixel,
        so bands give the same bytes."""
        width, height = im.size
        rows = max(1, BAND_PIXELS // max(1, width))
        if rows >= height:
            return self._band_to_array(im)
        out = np.empty((height, width, self.channels), np.uint8)
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            out[top:bottom] = self._band_to_array(im.crop((0, top, width, bottom)))
        return out

    def _band_to_array(self, im: Image.Image) -> np.ndarray:
        if im.mode.startswith("I;16") or im.mode == "I":
            im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8))
        if has_transparency(im):
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


def has_transparency(im: Image.Image) -> bool:
    """Whether the Pillow path composites this image onto white: an alpha channel, or a palette with a
    transparent entry."""
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def colour_conversion(im: Image.Image) -> str | None:
    """The kind of image whose colours the Pillow path converts, named so that a trailing 's' makes the
    plural ("CMYK JPEG", "YCCK JPEG", "transparent PNG"); None for RGB, grey, palette and deeper channels."""
    fmt = im.format or "image"
    if im.mode == "CMYK":  # Pillow decodes YCCK to CMYK; the Adobe marker's transform 2 says it was YCCK
        return f"{'YCCK' if im.info.get('adobe_transform') == 2 else 'CMYK'} {fmt}"
    return f"transparent {fmt}" if has_transparency(im) else None


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
    sos = first_scan(data)
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
