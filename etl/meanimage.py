"""Mean image: the train split's pixel sums made into the mean DIGITS stores (mean.binaryproto, mean.jpg)."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from etl.checkpoint import fsync_write
from etl.colour import ycc_to_rgb
from etl.datum import encode_blobproto
from etl.layout import MEAN_FILES
from etl.meansum import SumLayout


def mean_image(layout: SumLayout, vec: np.ndarray, count: int) -> np.ndarray:
    """The mean of every summed image, as RGB (or gray) floats of shape (H, W, C)."""
    total = layout.pixels(vec).astype(np.float64)
    planar = int(vec[-1])
    if planar:
        y, cb, cr = (p.astype(np.float64) / planar for p in layout.planes(vec))
        # The chroma upsampling a JPEG decoder does (each sample to 2x2 pixels, centred, linear; an odd
        # size's last sample half past the edge), which commutes with the mean.
        ch, cw = layout.chroma
        up = [cv2.resize(c, (2 * cw, 2 * ch), interpolation=cv2.INTER_LINEAR)[:layout.height, :layout.width]
              for c in (cb, cr)]
        total += planar * ycc_to_rgb(y, up[0], up[1])
    return total / count


def write_mean(out_dir: str | Path, mean: np.ndarray) -> None:
    """mean.binaryproto (CHW, BGR, float) and mean.jpg (RGB), as DIGITS writes them."""
    # DIGITS rounds the mean to whole pixel values before storing it as floats: do the same.
    image = np.clip(np.rint(mean), 0, 255).astype(np.uint8)
    channels = image.shape[2]
    planes = image[:, :, ::-1] if channels == 3 else image
    picture = io.BytesIO()
    Image.fromarray(image if channels == 3 else image[:, :, 0]).save(picture, format="JPEG", quality=90)
    files = zip((Path(out_dir, name) for name in MEAN_FILES),
                (encode_blobproto(planes.transpose(2, 0, 1).astype(np.float32)), picture.getvalue()), strict=True)
    for path, data in files:  # each whole or not at all; a failed write (a full disk) leaves no temporary file
        try:
            fsync_write(path, data)
        except OSError:
            path.with_name(path.name + ".tmp").unlink(missing_ok=True)
            raise
