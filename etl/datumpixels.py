"""Datum pixels: a raw record's planes and a JPEG record's libjpeg-turbo decode, for the reader and etl mean."""

from __future__ import annotations

import numpy as np
from turbojpeg import TJCS_CMYK, TJCS_YCCK, TJPF_GRAY, TJSAMP_GRAY, TurboJPEG

from etl.datum import Datum
from etl.words import plural

JPEG_MAGIC = b"\xff\xd8"


def datum_planes(datum: Datum) -> np.ndarray:
    """A raw record's CHW planes as an HWC view (no copy), in stored order (BGR for 3 channels): uint8 `data`, or
    float32 `float_data` when data is empty; ValueError when their count does not fit the record's size."""
    floats = not datum.data and bool(datum.float_data)
    values = np.asarray(datum.float_data, np.float32) if floats else np.frombuffer(datum.data, np.uint8)
    need = datum.channels * datum.height * datum.width
    if need <= 0 or values.size != need:
        raise ValueError(f"holds {plural(values.size, 'float value' if floats else 'byte')} where its size "
                         f"{datum.channels}x{datum.height}x{datum.width} (channels x height x width) needs {need:,d}")
    return values.reshape(datum.channels, datum.height, datum.width).transpose(1, 2, 0)


def turbojpeg_pixels(data: bytes, tj: TurboJPEG, colour_format: int, gray: bool | None = None,
                     flags: int = 0) -> np.ndarray | None:
    """A JPEG as (H, W, C) uint8 through libjpeg-turbo: one plane when `gray` (None: when the JPEG itself is gray),
    else colour_format (TJPF_RGB or TJPF_BGR). The same pixels as OpenCV's and Pillow's decode, RGB-coded JPEGs
    (Adobe transform 0) included; None for CMYK and YCCK, which libjpeg-turbo cannot turn to RGB or gray and
    OpenCV does. A damaged JPEG raises OSError with libjpeg's message."""
    _, _, subsample, colorspace = tj.decode_header(data)
    if colorspace in (TJCS_CMYK, TJCS_YCCK):
        return None
    if gray is None:
        gray = subsample == TJSAMP_GRAY
    pixels = tj.decode(data, pixel_format=TJPF_GRAY if gray else colour_format, flags=flags)
    return pixels if pixels.ndim == 3 else pixels[:, :, None]
