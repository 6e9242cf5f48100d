"""A worker's peak memory on the worst images the limits allow: each file converted alone in a fresh process.

    python benchmarks/memory_peak.py [--size 224] [--only NAME]

Files are generated into a temporary folder (each in its own process, so that making them costs the
measuring processes nothing); the peak is the converting process's VmHWM (etl.procs.peak_rss_kb), and
"added" is that minus its peak before the image (Python, numpy, OpenCV, libjpeg-turbo loaded).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MAKE = r"""
import io, sys
import numpy as np
from PIL import Image, ImageFile
ImageFile.MAXBLOCK = 1 << 24
kind, width, height, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def claimed(progressive):
    pixels = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90, progressive=progressive, subsampling=0)
    data, pos = bytearray(buf.getvalue()), 2
    while data[pos + 1] not in (0xC0, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    data[pos + 5:pos + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)

def photo(mode):
    small = np.random.default_rng(1).integers(0, 256, (48, 64, 4), dtype=np.uint8)
    return Image.fromarray(small, "RGBA").resize((width, height), Image.BILINEAR).convert(mode)

buf = io.BytesIO()
if kind.startswith("claims"):
    buf.write(claimed("progressive" in kind))
elif kind.startswith("jpeg"):
    im = photo("CMYK" if "cmyk" in kind else "RGB")
    im.save(buf, "JPEG", quality=90, progressive="progressive" in kind, subsampling=0)
elif kind.startswith("noise"):  # incompressible: the file is as large as its pixels
    pixels = np.random.default_rng(2).integers(0, 256, (height, width, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(buf, "PNG", compress_level=1)
else:
    photo(kind.split("-")[1]).save(buf, "PNG", compress_level=1)
open(out, "wb").write(buf.getvalue())
"""

MEASURE = r"""
import json, sys
from collections import defaultdict
from etl.converter import ImageConverter, WorkSpec
from etl.messages import Item
from etl.settings import Settings
from etl.procs import peak_rss_kb
data, size = open(sys.argv[1], "rb").read(), int(sys.argv[2])
conv = ImageConverter(WorkSpec.for_split(Settings(width=size, height=size, seed=1), "train", None, True))
before = peak_rss_kb()
try:
    conv.convert_bytes(data, Item(0, "x", 0), defaultdict(float), conv.sums.zeros())
    result = "converted"
except Exception as exc:
    result = f"refused: {str(exc)[:70]}"
print(json.dumps({"before": before, "peak": peak_rss_kb(), "result": result}))
"""

CASES = [  # (name, width, height): the file, then the largest of each kind the decode budget lets in
    ("claims-13000x13000.jpg", 13000, 13000),
    ("claims-progressive-13000x13000.jpg", 13000, 13000),
    ("jpeg-13000x13000.jpg", 13000, 13000),
    ("claims-8192x8192.jpg", 8192, 8192),
    ("jpeg-cmyk-8192x8192.jpg", 8192, 8192),
    ("png-RGBA-8192x8192.png", 8192, 8192),
    ("png-RGB-8192x8192.png", 8192, 8192),
    ("png-L-8192x8192.png", 8192, 8192),
    ("noise-RGBA-8192x8192.png", 8192, 8192),
    ("jpeg-progressive-5792x5792.jpg", 5792, 5792),
    ("jpeg-progressive-cmyk-5792x5792.jpg", 5792, 5792),
    ("claims-progressive-5792x5792.jpg", 5792, 5792),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="output width and height (default 224)")
    ap.add_argument("--only", default="", help="only the cases whose name contains this")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    print(f"output {args.size}x{args.size}, JPEG q90, squash; MB = 2^20 bytes")
    print(f"{'file':38s} {'KB':>7s} {'peak MB':>8s} {'added MB':>9s}  result")
    with tempfile.TemporaryDirectory() as tmp:
        for name, width, height in CASES:
            if args.only not in name:
                continue
            path = Path(tmp, name)
            subprocess.run([sys.executable, "-c", MAKE, name, str(width), str(height), str(path)], check=True)
            proc = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(args.size)], cwd=repo,
                                  capture_output=True, text=True, check=True)
            got = json.loads(proc.stdout)
            print(f"{name:38s} {path.stat().st_size // 1024:7d} {got['peak'] / 1024:8.0f} "
                  f"{(got['peak'] - got['before']) / 1024:9.0f}  {got['result']}")
            path.unlink()


if __name__ == "__main__":
    main()
