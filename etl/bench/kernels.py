"""Kernels: etl's per-image kernel against the DIGITS/Caffe kernels (ms, PSNR), and the decode+encode limit."""

from __future__ import annotations

import io
import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from PIL import Image

from etl.baselines import opencv_kernel, pil_kernel
from etl.bench.engine import converter, converting
from etl.codec import Codec, chroma_shape

SIZE = 224


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def _best_ms(fn: Callable[[Any], Any], inputs: list[Any], rounds: int = 3) -> tuple[float, list[Any]]:
    """ms per input of the best of `rounds` passes over all inputs (after a warm-up on the first 10)."""
    for x in inputs[:10]:
        fn(x)  # warm-up
    best, out = float("inf"), []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = [fn(x) for x in inputs]
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / max(1, len(inputs)), out


def _jpeg_of(value: bytes) -> bytes:
    return value[value.index(b"\xff\xd8"):value.rindex(b"\xff\xd9") + 2]


def kernels(blobs: list[bytes]) -> dict[str, dict[str, float]]:
    """ms per image and PSNR (against LANCZOS of the full decode) of etl's kernel and the baselines'."""
    cv2.setNumThreads(1)
    refs = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)) for b in blobs]
    etl_convert = converting(converter(SIZE))
    contenders: dict[str, Callable[[bytes], bytes]] = {
        "Pillow BILINEAR (DIGITS)": pil_kernel,
        "OpenCV INTER_LINEAR (Caffe)": opencv_kernel,
        "etl": lambda b: _jpeg_of(etl_convert(b)[0]),
    }
    out = {}
    for name, fn in contenders.items():
        ms, results = _best_ms(fn, blobs)
        quality = float(np.mean([psnr(np.asarray(Image.open(io.BytesIO(r)).convert("RGB")), ref)
                                 for r, ref in zip(results, refs, strict=True)]))
        out[name] = {"ms_per_image": round(ms, 3), "psnr_db": round(quality, 2)}
    return out


# ---- the limit: full decode + encode on every core -------------------------------------------------

def _limit_worker(blobs: list[bytes], results: Any) -> None:
    """The cheapest full decode there is (to YCbCr planes, as etl does) and a 224x224 encode from it."""
    codec = Codec(3, 10**9)
    t0 = time.perf_counter()
    for b in blobs:
        planes = codec.decode_planes(b, lambda w, h: 1)
        if planes is None:
            px = codec.decode(b, lambda w, h: 1).pixels
            codec.encode(np.ascontiguousarray(px[:SIZE, :SIZE]), "jpg", 90)
            continue
        y = np.ascontiguousarray(planes.y[:SIZE, :SIZE])
        ch, cw = chroma_shape(*y.shape)
        codec.encode_planes(y, *(np.ascontiguousarray(c[:ch, :cw]) for c in (planes.cb, planes.cr)), 90)
    results.put((len(blobs), time.perf_counter() - t0))


def limit(blobs: list[bytes], workers: int) -> float:
    """images/s of full-size decode + a 224x224 encode alone, from memory, every core, no IPC.

    Each process gets its share at fork (nothing is sent) and times itself; the slowest sets the pace.
    """
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_limit_worker, args=(blobs[i::workers], results)) for i in range(workers)]
    for p in procs:
        p.start()
    done = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(n for n, _ in done) / max(seconds for _, seconds in done)
