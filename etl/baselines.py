"""Baselines: the naive converters users write today (Pool over the files, LMDB writes in the parent)."""

from __future__ import annotations

import io
import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import lmdb
import numpy as np
from PIL import Image

from etl.datum import encode_caffe_datum, encode_datum

SIZE = 224


def pil_kernel(data: bytes) -> bytes:
    """DIGITS' kernel: PIL open, convert RGB, resize BILINEAR, save JPEG quality 90."""
    im = Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def opencv_kernel(data: bytes) -> bytes:
    """Caffe's kernel: cv2.imdecode, resize INTER_LINEAR, imencode JPEG quality 90."""
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _job(args: tuple[Callable[[bytes], bytes], str, int]) -> tuple[bytes | None, int]:
    kernel, path, label = args
    try:
        with open(path, "rb") as fh:
            return kernel(fh.read()), label
    except Exception:  # the baseline skips what it cannot read, like the scripts it stands for
        return None, label


def _init_worker() -> None:
    # Pool.__exit__ ends its workers with SIGTERM; `etl bench` turns SIGTERM into KeyboardInterrupt, which a fork
    # inherits: a worker unwinding from it can leave the task queue's lock held, and its siblings wait for ever
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cv2.setNumThreads(1)


def _to_lmdb(db_path: Path, records: Iterable[tuple[bytes, bytes]], commit_every: int) -> int:
    """The scripts' writer: put each (key, value), commit every `commit_every` records; returns the count."""
    env = lmdb.open(str(db_path), map_size=1 << 40)
    written = 0
    txn = env.begin(write=True)
    for key, value in records:
        txn.put(key, value)
        written += 1
        if written % commit_every == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    env.sync(True)
    env.close()
    return written


def _timed(t0: float, written: int) -> dict[str, float]:
    seconds = time.perf_counter() - t0
    return {"images": written, "seconds": seconds, "images_per_second": written / seconds}


def run_pool_baseline(kernel: Callable[[bytes], bytes], items: list[tuple[str, int]], workers: int,
                      db_path: Path, commit_every: int = 1000) -> dict[str, float]:
    """Pool.imap over the files; the parent builds Datums and commits every `commit_every` records."""
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        done = ((data, label) for data, label in pool.imap(_job, [(kernel, p, lb) for p, lb in items], chunksize=16)
                if data is not None)
        records = ((b"%08d_%d" % (n, label), encode_datum(3, SIZE, SIZE, data, label, True))
                   for n, (data, label) in enumerate(done))
        written = _to_lmdb(db_path, records, commit_every)
    return _timed(t0, written)


def _imageset_job(args: tuple[int, str, str, int, int, int]) -> tuple[int, str, bytes | None]:
    """convert_imageset's ReadImageToDatum with a resize: cv2.imread(IMREAD_COLOR), cv2.resize INTER_LINEAR,
    a raw Datum of the CHW BGR pixels (None for a file OpenCV cannot read)."""
    line, root, path, label, width, height = args
    img = cv2.imread(f"{root}/{path}", cv2.IMREAD_COLOR)
    if img is None:
        return line, path, None
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    chw = np.ascontiguousarray(img.transpose(2, 0, 1)).tobytes()
    return line, path, encode_caffe_datum(chw, label, (3, height, width))


def run_imageset_baseline(root: str, items: list[tuple[str, int]], workers: int, db_path: Path, width: int = 256,
                          height: int = 256, commit_every: int = 1000) -> dict[str, float]:
    """convert_imageset --resize_width --resize_height as a Pool script: Pool.imap over the list's lines, each
    worker reading, resizing and building the raw Datum; the parent writes keys '%08d_%s' (line, path) and
    commits every `commit_every` records."""
    t0 = time.perf_counter()
    jobs = [(line, root, path, label, width, height) for line, (path, label) in enumerate(items)]
    with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        records = ((b"%08d_%s" % (line, path.encode()), datum)
                   for line, path, datum in pool.imap(_imageset_job, jobs, chunksize=16) if datum is not None)
        written = _to_lmdb(db_path, records, commit_every)
    return _timed(t0, written)
