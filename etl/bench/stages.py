"""Stages: ms per image of each stage of etl's kernel on its own, one process, and LMDB's put and commit costs."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import lmdb
import numpy as np

from etl.bench.engine import converter, converting, scale_chooser
from etl.bench.kernels import SIZE, _best_ms
from etl.codec import Codec, Decoded, Planes
from etl.datum import encode_datum
from etl.transform import apply_geometry, fit_planes, plan_geometry


def stages(files: list[Path], work: Path) -> dict[str, float]:
    """ms per image of each stage on its own, one process, and all of them together."""
    cv2.setNumThreads(1)
    codec = Codec(3, 10**9)
    conv = converter(SIZE)
    full = lambda w, h: 1  # noqa: E731
    scaled = scale_chooser(conv)
    read_ms, blobs = _best_ms(lambda p: p.read_bytes(), files, rounds=1)
    header_ms, _ = _best_ms(codec.tj.decode_header, blobs)
    decode_full_ms, _ = _best_ms(lambda b: codec.decode(b, full), blobs)
    planes_full_ms, _ = _best_ms(lambda b: codec.decode_planes(b, full) or codec.decode(b, full), blobs)
    decode_ms, decoded = _best_ms(lambda b: codec.decode_planes(b, scaled) or codec.decode(b, scaled), blobs)
    resize_ms, fitted = _best_ms(_fit, decoded)
    encode_ms, payloads = _best_ms(lambda out: codec.encode_planes(*out, 90) if len(out) == 3
                                   else codec.encode(out[0], "jpg", 90), fitted)
    datum_ms, values = _best_ms(lambda jpg: encode_datum(3, SIZE, SIZE, jpg, 7, True), payloads)
    together_ms, _ = _best_ms(converting(conv), blobs)
    put_ms, commit_ms = _lmdb_costs(values, work / "stage_db")
    return {"read": read_ms, "header": header_ms, "decode to RGB (full size)": decode_full_ms,
            "decode to YCbCr planes (full size)": planes_full_ms,
            "decode (as used: planes, DCT-scaled when large)": decode_ms, "resize": resize_ms, "encode": encode_ms,
            "datum": datum_ms, "writer put": put_ms, "writer commit": commit_ms,
            "decode+resize+encode+datum together": together_ms}


def _fit(decoded: Planes | Decoded) -> tuple[np.ndarray, ...]:
    geo = plan_geometry(decoded.src_w, decoded.src_h, SIZE, SIZE, "squash")
    if isinstance(decoded, Planes):
        return fit_planes(decoded, geo, SIZE, SIZE)
    return (apply_geometry(decoded.pixels, geo, SIZE, SIZE, None),)


def _lmdb_costs(values: list[bytes], path: Path, batch: int = 1000) -> tuple[float, float]:
    """ms per record of cursor puts and of commits, every `batch` records, up to 3,000 records."""
    if not values:  # the loop below would never reach 3,000 (build_corpus refuses a corpus without images)
        raise ValueError("no records to measure LMDB's costs with")
    env = lmdb.open(str(path), map_size=1 << 32)  # the writer's settings: LMDB's durable defaults
    put = commit = 0.0
    n = 0
    while n < 3000:
        txn = env.begin(write=True)
        t0 = time.perf_counter()
        cursor = txn.cursor()
        for v in values:
            cursor.put(b"%08d_%d" % (n, 7), v, append=True)
            n += 1
            if n % batch == 0:
                break
        t1 = time.perf_counter()
        txn.commit()
        put, commit = put + t1 - t0, commit + time.perf_counter() - t1
    env.close()
    return 1000 * put / n, 1000 * commit / n
