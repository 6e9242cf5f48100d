"""Caffe image: one image as convert_imageset's ReadImageToDatum makes it: its file's own bytes, or decoded,
resized and encoded (or raw BGR), in a Datum without the fields Caffe leaves out."""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
from PIL import Image

from etl.codec import JPEG_MAGIC, BadImage, Codec, chw_bgr_bytes, has_scan_data
from etl.datum import encode_caffe_datum

JPEG_NAMES = ("jpg", "jpeg", "jpe")
EOI_TAIL = 64  # bytes at a JPEG's end searched for its end-of-image marker (some files carry trailing bytes)


def extension(path: str) -> str:
    """The file name's extension, lower case, as convert_imageset guesses an encoding from it."""
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def matches(path: str, encode_type: str) -> bool:
    """Caffe's matchExt: the extension is the encoding, and jpg also takes .jpeg."""
    ext, enc = extension(path), encode_type.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def codec_name(encode_type: str) -> str:
    """etl's encoder for an encoding name: JPEG for jpg/jpeg, PNG for png and, lossless, for any other."""
    return "jpg" if encode_type.lower() in JPEG_NAMES else "png"


class Header(NamedTuple):
    width: int
    height: int
    gray: bool


class CaffeImage:
    """convert_imageset's per-image choices, for one worker: channels (1: --gray), the output size (None: as is),
    encoded (--encoded) and encode_type ('' = each file's extension)."""

    def __init__(self, codec: Codec, size: tuple[int, int] | None, encoded: bool, encode_type: str,
                 quality: int) -> None:
        self.codec, self.size, self.encoded, self.encode_type, self.quality = codec, size, encoded, encode_type, quality

    def encoding(self, path: str) -> str:
        """The encoding of this image's record ('' for raw): --encode_type, or its extension (Caffe's guess)."""
        # a name with no extension: PNG, as for any extension other than JPEG's (Caffe's imencode fails there)
        return (self.encode_type or extension(path) or "png") if self.encoded else ""

    def passes_through(self, path: str, data: bytes) -> tuple[bool, str | None]:
        """(whether the file's bytes go in as they are, a warning): Caffe's rule (encoded, no resize, the
        extension is the encoding), and a colour mode the file already has: under --gray, a gray file."""
        enc = self.encoding(path)
        if not enc or self.size is not None or not matches(path, enc):
            return False, None
        header = self.header(data)
        if self.codec.channels == 1 and not header.gray:
            return False, None
        if not data.startswith(JPEG_MAGIC):
            # Caffe decodes every file it passes through, and skips what does not decode. A JPEG's header
            # and end marker are checked (a full decode would cost what passing it through saves); other
            # formats (PNG, BMP: rare, and no end marker to look at) are decoded.
            self.codec.decode(data, lambda w, h: 1)
        return True, _cut_warning(data)

    def header(self, data: bytes) -> Header:
        """The image's size and colour from its header alone; BadImage when it has none, or is too large."""
        if not data:
            raise BadImage("empty file (0 bytes)")
        try:
            if data.startswith(JPEG_MAGIC):
                if not has_scan_data(data):
                    raise BadImage("JPEG with no image data (cut short after its header)")
                width, height, _, colorspace = self.codec.tj.decode_header(data)
                header = Header(width, height, colorspace == 2)  # TJCS_GRAY
            else:
                with Image.open(io.BytesIO(data)) as im:
                    header = Header(im.width, im.height, im.mode in ("1", "L", "LA", "I", "I;16", "F"))
        except BadImage:
            raise
        except Exception as exc:
            raise BadImage(f"cannot read the image header: {exc}") from None
        self.codec.check_claimed_size(header.width, header.height)
        return header

    def record(self, img: np.ndarray, path: str, label: int) -> bytes:
        """The Datum of decoded (and resized) pixels: encoded as its encoding, or raw CHW BGR."""
        enc = self.encoding(path)
        if enc:
            return encode_caffe_datum(self.codec.encode(img, codec_name(enc), self.quality), label, None)
        height, width, channels = img.shape
        return encode_caffe_datum(chw_bgr_bytes(img), label, (channels, height, width))


def _cut_warning(data: bytes) -> str | None:
    """A JPEG passed through undecoded: say when its end-of-image marker is missing (likely cut short)."""
    if data.startswith(JPEG_MAGIC) and b"\xff\xd9" not in data[-EOI_TAIL:]:
        return "no JPEG end-of-image marker: the file may be cut short (its bytes are stored as they are)"
    return None
