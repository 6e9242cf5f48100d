"""Synth: ImageNet-like image trees (photo-like content, ImageNet's size and codec mix) for demos and tests."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from turbojpeg import TJPF_CMYK, TurboJPEG

from etl.codec import first_scan


@dataclass(frozen=True)
class TreeSpec:
    """How many classes and images per class, and whether to add the awkward-but-valid kinds."""

    classes: int = 4
    per_class: int = 10
    seed: int = 0
    awkward: bool = True  # CMYK JPEG, PNG named .JPEG, RGBA/palette PNG, BMP, tiny and huge images
    prefix: str = "n0"


def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth shaded regions, edges and fine grain: compresses and resizes like a photograph."""
    small = rng.integers(0, 256, size=(max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    for _ in range(int(rng.integers(3, 9))):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(4, max(5, width // 3))), int(rng.integers(4, max(5, height // 3))))
        colour = tuple(float(c) for c in rng.integers(0, 256, 3))
        cv2.ellipse(img, center, axes, float(rng.integers(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 1.2)
    img += rng.normal(0, 4.5, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def imagenet_size(rng: np.random.Generator) -> tuple[int, int]:
    """Mostly ~500x375 landscape or portrait; a few tiny (<224) and a few large (>1500)."""
    roll = rng.random()
    if roll < 0.06:
        return int(rng.integers(60, 224)), int(rng.integers(50, 224))
    if roll < 0.08:
        return int(rng.integers(1500, 2400)), int(rng.integers(1100, 1800))
    long_side, short_side = int(rng.integers(390, 580)), int(rng.integers(310, 450))
    return (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)


def jpeg_bytes(rng: np.random.Generator, pixels: np.ndarray) -> bytes:
    """ImageNet's codec mix: mostly 4:4:4 at q~96, a fifth 4:2:0 lower quality, ~2% gray."""
    roll = rng.random()
    im = Image.fromarray(pixels)
    buf = io.BytesIO()
    if roll < 0.02:
        im.convert("L").save(buf, "JPEG", quality=90)
    elif roll < 0.78:
        im.save(buf, "JPEG", quality=int(rng.integers(92, 98)), subsampling=0)
    else:
        im.save(buf, "JPEG", quality=int(rng.integers(75, 92)), subsampling=2)
    return buf.getvalue()


def awkward_files(rng: np.random.Generator) -> dict[str, bytes]:
    """Valid images a converter must still get right."""
    files: dict[str, bytes] = {}
    base = photo_like(rng, 320, 240)
    files["cmyk.JPEG"] = _save(Image.fromarray(base).convert("CMYK"), "JPEG", quality=90)
    files["really_png.JPEG"] = _save(Image.fromarray(base), "PNG")
    rgba = Image.fromarray(base).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))))
    files["alpha.png"] = _save(rgba, "PNG")
    pal = Image.fromarray(base).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    files["palette.PNG"] = _save(pal, "PNG", transparency=0)
    files["bitmap.bmp"] = _save(Image.fromarray(base), "BMP")
    files["gray.jpg"] = _save(Image.fromarray(base).convert("L"), "JPEG", quality=85)
    files["tiny.jpg"] = _save(Image.fromarray(photo_like(rng, 40, 30)), "JPEG", quality=90)
    files["progressive.jpeg"] = _save(Image.fromarray(base), "JPEG", quality=90, progressive=True)
    files["very wide ünïcode.jpg"] = _save(Image.fromarray(photo_like(rng, 1200, 80)), "JPEG", quality=90)
    files["tall sliver.jpg"] = _save(Image.fromarray(photo_like(rng, 20, 900)), "JPEG", quality=90)
    files["ycck.JPEG"] = ycck_jpeg(base, quality=90)
    return files


def ycck_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """A YCCK JPEG (Adobe transform 2) of RGB pixels, as libjpeg writes one from CMYK; libjpeg-turbo refuses
    it for RGB output. The Adobe marker says the CMYK is stored inverted, so the inverse of Pillow's CMYK goes in."""
    inverted = 255 - np.asarray(Image.fromarray(pixels).convert("CMYK"))
    return TurboJPEG().encode(np.ascontiguousarray(inverted), quality=quality, pixel_format=TJPF_CMYK)


def bad_files(rng: np.random.Generator) -> dict[str, tuple[bytes, str | None]]:
    """Broken inputs: name -> (bytes, None if it must be skipped, else 'warning' if it converts with one)."""
    good = _save(Image.fromarray(photo_like(rng, 400, 300)), "JPEG", quality=90)
    sos = first_scan(good)
    header_end = sos + 2 + int.from_bytes(good[sos + 2: sos + 4], "big")
    sof = good.index(b"\xff\xc0")
    huge = bytearray(good)
    huge[sof + 5: sof + 9] = (60000).to_bytes(2, "big") * 2
    junk = good[:-2] + bytes(range(16)) + good[-2:]  # "Corrupt JPEG data: 16 extraneous bytes"
    return {
        "zero.JPEG": (b"", None),
        "error_page.JPEG": (b"<!DOCTYPE html><html><head><title>404 Not Found</title></head></html>", None),
        "notes.jpg": (b"this file is not an image at all\n" * 5, None),
        "noise.JPEG": (rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(), None),
        "header_only.JPEG": (good[:header_end], None),
        "claims_60000x60000.JPEG": (bytes(huge), None),
        "truncated.JPEG": (good[: int(len(good) * 0.7)], "warning"),
        "junk_bytes.JPEG": (junk, "warning"),
        "cut.png": (_save(Image.fromarray(photo_like(rng, 64, 64)), "PNG")[:300], None),
    }


def _save(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def make_tree(root: str | Path, spec: TreeSpec) -> list[Path]:
    """Write root/<class>/<image> files; returns the paths written."""
    rng = np.random.default_rng(spec.seed)
    written: list[Path] = []
    for c in range(spec.classes):
        folder = Path(root, f"{spec.prefix}{c:07d}")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(spec.per_class):
            w, h = imagenet_size(rng)
            path = folder / f"{folder.name}_{i}.JPEG"
            path.write_bytes(jpeg_bytes(rng, photo_like(rng, w, h)))
            written.append(path)
        if spec.awkward and c == 0:
            for name, data in awkward_files(rng).items():
                (folder / "nested").mkdir(exist_ok=True)
                path = folder / "nested" / name if name.startswith("progressive") else folder / name
                path.write_bytes(data)
                written.append(path)
    return written
