"""Mean of any Datum LMDB (etl, Caffe or DIGITS; encoded or raw): `etl mean`, a parallel compute_image_mean."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import lmdb
import numpy as np
from PIL import Image
from turbojpeg import TJFLAG_STOPONWARNING, TJPF_BGR, TurboJPEG

from etl.checkpoint import fsync_write
from etl.codec import libjpeg_warnings
from etl.datum import Datum, decode_datum, encode_blobproto
from etl.datumpixels import JPEG_MAGIC, datum_planes, turbojpeg_pixels
from etl.errors import PipelineError, UsageError, write_failure
from etl.layout import REPORT
from etl.outlock import shared_around
from etl.procs import child_signals, die_with_parent, mp_context
from etl.progress import ProgressBar
from etl.reader import ENVIRONMENTS, SHARD_MANIFEST, DamagedDatabase, open_checked
from etl.settings import usable_cores
from etl.words import plural

INPROCESS_BELOW = 2_000  # records: below this, starting processes costs more than it saves
RANGES_PER_WORKER = 8  # several ranges per worker, so that a slow core does not hold the others back
# Records per range: the bar moves at least every 2,048 records, and Ctrl-C waits for at most one range.
RANGE_LIMITS = (64, 2_048)
STAGED = 257  # uint8 images a uint16 sum holds exactly (257 x 255 = 65,535)


class Shape(NamedTuple):
    """A record's size after decoding, in Caffe's order."""

    channels: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.channels}x{self.height}x{self.width}"


class KeyRange(NamedTuple):
    """`count` records in key order from `first_key`: one task."""

    first_key: bytes
    count: int


class Stop(NamedTuple):
    """The first record a task could not add: unreadable (reason) or of another size than the task's first."""

    key: bytes
    reason: str | None = None
    shape: Shape | None = None


class RangeSum(NamedTuple):
    """What a task sends back: the exact sum of the records it added (HWC uint64, BGR for colour), and where
    it stopped early, if it did."""

    first_key: bytes
    shape: Shape | None  # of its first record; None when that record could not be read
    total: np.ndarray | None
    count: int
    stop: Stop | None


class PixelSum:
    """The exact sum of same-sized uint8 images: added into uint16 (a quarter of uint64's memory traffic, about
    half the time per image) and moved into the uint64 total every STAGED images, before uint16 could overflow."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.total = np.zeros(shape, np.uint64)
        self.staged = np.zeros(shape, np.uint16)
        self.pending = 0

    def add(self, pixels: np.ndarray) -> None:
        np.add(self.staged, pixels, out=self.staged)
        self.pending += 1
        if self.pending == STAGED:
            self.flush()

    def flush(self) -> np.ndarray:
        np.add(self.total, self.staged, out=self.total)
        self.staged.fill(0)
        self.pending = 0
        return self.total


class RecordError(Exception):
    """A record that cannot be added; the message says why, without the key (the caller adds it)."""


@dataclass(frozen=True)
class DbMean:
    """The exact sum of every record and what Caffe's compute_image_mean makes of it."""

    total: np.ndarray  # CHW uint64, the blob's channel order (BGR for colour)
    count: int

    @property
    def shape(self) -> Shape:
        return Shape(*self.total.shape)

    def mean(self) -> np.ndarray:
        """sum / count as float32, CHW, not rounded (compute_image_mean does not round; DIGITS does)."""
        return (self.total / self.count).astype(np.float32)

    def channel_means(self) -> list[float]:
        pixels = self.count * self.shape.height * self.shape.width
        return [int(plane.sum()) / pixels for plane in self.total]


def show_key(key: bytes) -> str:
    return key.decode("utf-8", errors="backslashreplace")


@contextmanager
def open_db(path: str) -> Iterator[lmdb.Environment]:
    """The environment this process's LmdbDatasets share on these files, if one has them open (py-lmdb refuses
    a second open); else one of its own, closed after: read-only, without the lock file (the database may sit
    on a read-only disk), read-ahead on (each task reads a run of neighbouring keys, which etl, Caffe and
    DIGITS all write in key order)."""
    shared = ENVIRONMENTS.find(path)
    if shared is not None:
        yield shared
        return
    env = _open_own(path)
    try:
        yield env
    finally:
        env.close()


def _open_own(path: str) -> lmdb.Environment:
    try:
        return open_checked(path)
    except DamagedDatabase as exc:
        raise UsageError(str(exc)) from None
    except lmdb.Error as exc:
        raise UsageError(f"cannot open the database {path}: {exc}") from None


def check_db_path(path: str) -> None:
    """One line for a path that is not an LMDB folder nor a sharded split, naming the databases (a sharded split
    as one) when given the dataset's folder."""
    where = Path(path)
    if not where.exists():
        raise UsageError(f"database not found: {path}")
    if where.is_file():
        raise UsageError(f"give the database folder (the one holding data.mdb), not the file {path}")
    if not (where / "data.mdb").is_file() and not (where / SHARD_MANIFEST).is_file():
        from etl.merge import shards_inside, unfinished

        if where.resolve().name.endswith("_db") and (where.resolve().parent / REPORT).is_file() \
                and shards_inside(where):  # a split's folder of shards: the split is asked for, not a shard
            raise UsageError(unfinished(where, where.resolve().parent))
        inside = sorted(str(p.parent) for pattern in ("*/data.mdb", f"*/{SHARD_MANIFEST}")
                        for p in where.glob(pattern) if p.is_file())
        hint = f"; give one of the databases it holds: {', '.join(inside)}" if inside else ""
        raise UsageError(f"{path} is not an LMDB database: no data.mdb in it{hint}")


def is_shard(folder: Path) -> bool:
    """One shard of a sharded split: its folder holds the split's manifest."""
    return (folder.parent / SHARD_MANIFEST).is_file()


def databases(path: str) -> list[str]:
    """The LMDB folders of a database: itself, or a sharded split's shards in write order (its mean is theirs).
    A shard, or a split's shards, checked as etl merge checks them: a damaged one is one line saying what makes
    it whole again."""
    where = Path(path)
    if (where / SHARD_MANIFEST).is_file():
        from etl.merge import shard_folders  # only for shards: merge's imports cost a quarter of a second

        return [str(folder) for folder in shard_folders(where)]
    if is_shard(where):
        from etl.merge import shard_entries

        shard_entries(where, where.parent.parent)
    return [path]


def plan_ranges(path: str, workers: int, range_records: int | None = None) -> list[KeyRange]:
    """Walk the keys once, keeping each range's first (values are not read: their overflow pages stay on
    disk); the walk, not the header's entry count, gives the exact count."""
    starts: list[bytes] = []
    records = 0
    with open_db(path) as env, env.begin() as txn:  # closed before any fork: never used across fork()
        size = range_records or _range_size(int(txn.stat()["entries"]), workers)
        for index, key in enumerate(txn.cursor().iternext(keys=True, values=False)):
            if index % size == 0:
                starts.append(bytes(key))
            records = index + 1
    return [KeyRange(key, min(size, records - i * size)) for i, key in enumerate(starts)]


def _range_size(records: int, workers: int) -> int:
    low, high = RANGE_LIMITS
    return max(low, min(high, -(-records // (workers * RANGES_PER_WORKER))))


def raw_pixels(datum: Datum) -> np.ndarray:
    """A raw record's CHW planes as an HWC view (no copy)."""
    if not datum.data and datum.float_data:
        raise RecordError("holds float_data (float pixels); etl mean sums 8-bit pixels only")
    try:
        return datum_planes(datum)
    except ValueError as exc:
        raise RecordError(str(exc)) from None


def decode_jpeg(data: bytes, tj: TurboJPEG) -> np.ndarray | None:
    """libjpeg-turbo straight to BGR, or to one plane for a gray JPEG: what OpenCV gives, faster.

    None for what libjpeg-turbo cannot decode as OpenCV does (CMYK and YCCK: OpenCV converts them itself) and
    for a JPEG that makes libjpeg warn (OpenCV goes on past a warning)."""
    with libjpeg_warnings() as caught:
        try:
            pixels = turbojpeg_pixels(data, tj, TJPF_BGR, flags=TJFLAG_STOPONWARNING)
        except OSError:
            return None
    return None if caught else pixels


def decode_opencv(data: bytes) -> np.ndarray:
    """As Caffe's DecodeDatumNative: cv::imdecode(data, -1), IMREAD_UNCHANGED (gray stays one channel, an
    alpha channel stays, no EXIF rotation); Caffe refuses anything but 8-bit pixels."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise RecordError("holds data that is not an image OpenCV can decode")
    if pixels.dtype != np.uint8:
        raise RecordError(f"holds {pixels.dtype.itemsize * 8}-bit pixels; Caffe's mean takes 8-bit only")
    return pixels


def record_pixels(value: bytes, tj: TurboJPEG) -> np.ndarray:
    """One stored value as HWC uint8 pixels, BGR for colour: Caffe's view of the record."""
    try:
        datum = decode_datum(value)
    except ValueError as exc:
        raise RecordError(f"is not a Datum ({exc})") from None
    return native_pixels(datum, tj)


def native_pixels(datum: Datum, tj: TurboJPEG) -> np.ndarray:
    """A parsed record's HWC uint8 pixels, BGR for colour, as Caffe's DecodeDatumNative gives them."""
    if not datum.encoded:
        return raw_pixels(datum)
    if not datum.data:
        raise RecordError("is marked encoded but holds no data")
    pixels = decode_jpeg(datum.data, tj) if datum.data.startswith(JPEG_MAGIC) else None
    if pixels is None:
        pixels = decode_opencv(datum.data)
    return pixels if pixels.ndim == 3 else pixels[:, :, None]


def sum_range(path: str, key_range: KeyRange) -> RangeSum:
    """A task: open the database, add up `count` records from the first key, stop at the first odd one."""
    tj = TurboJPEG()
    shape: Shape | None = None
    total: PixelSum | None = None
    added = 0
    with open_db(path) as env, env.begin() as txn:
        cursor = txn.cursor()
        if not cursor.set_key(key_range.first_key):
            return RangeSum(key_range.first_key, None, None, 0,
                            Stop(key_range.first_key, "is gone: the database changed while it was read"))
        for key, value in _take(cursor, key_range.count):
            try:
                pixels = record_pixels(value, tj)
            except RecordError as exc:
                return _ended(key_range, shape, total, added, Stop(key, str(exc)))
            this = Shape(pixels.shape[2], pixels.shape[0], pixels.shape[1])
            if total is None:
                shape, total = this, PixelSum(pixels.shape)
            elif this != shape:
                return _ended(key_range, shape, total, added, Stop(key, shape=this))
            total.add(pixels)
            added += 1
    return _ended(key_range, shape, total, added, None)


def _ended(key_range: KeyRange, shape: Shape | None, total: PixelSum | None, added: int,
           stop: Stop | None) -> RangeSum:
    return RangeSum(key_range.first_key, shape, None if total is None else total.flush(), added, stop)


def _take(cursor: lmdb.Cursor, count: int) -> Iterator[tuple[bytes, bytes]]:
    for _ in range(count):
        yield cursor.key(), cursor.value()
        if not cursor.next():
            return


def _odd(key: bytes, this: Shape, first_key: bytes, first: Shape) -> str:
    return (f"record {show_key(key)} is {this} (channels x height x width), the first record ({show_key(first_key)}) "
            f"is {first}: every record must have the same size for a mean")


def _sum_range_task(args: tuple[str, KeyRange]) -> RangeSum:
    return sum_range(*args)


def _worker_start() -> None:
    """Ctrl-C is the parent's to handle (it ends the pool); a worker dies with its parent."""
    child_signals(ignore_sigterm=False)
    die_with_parent()


def combine(parts: Iterable[RangeSum], bar: ProgressBar) -> DbMean:
    """Add the ranges up in key order; the first record that cannot be added, in key order, ends it."""
    total: np.ndarray | None = None
    first_key, first = b"", Shape(0, 0, 0)
    count = 0
    for part in parts:
        bar.update(part.count)
        if total is None and part.shape is not None:
            first_key, first = part.first_key, part.shape
            total = np.zeros((first.height, first.width, first.channels), np.uint64)
        if part.shape is not None and part.shape != first:
            raise UsageError(_odd(part.first_key, part.shape, first_key, first))
        if part.stop is not None:
            stop = part.stop
            raise UsageError(f"record {show_key(stop.key)} {stop.reason}" if stop.shape is None else
                             _odd(stop.key, stop.shape, first_key, first))
        if part.total is not None and total is not None:
            np.add(total, part.total, out=total)
            count += part.count
    if total is None:
        raise UsageError("the database holds no records")
    return DbMean(np.ascontiguousarray(total.transpose(2, 0, 1)), count)


def compute_mean(path: str, workers: int, progress: bool = False, inprocess_below: int | None = None,
                 range_records: int | None = None) -> DbMean:
    """The exact mean of every record; `workers` processes unless the database holds fewer records than
    inprocess_below (default INPROCESS_BELOW); range_records: records per task (default: from the count)."""
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    check_db_path(path)
    tasks = [(db, r) for db in databases(path) for r in plan_ranges(db, workers, range_records)]
    records = sum(r.count for _, r in tasks)
    if records == 0:
        raise UsageError(f"the database {path} holds no records")
    with ProgressBar(total=records, desc="mean", unit="rec", disable=not progress, file=sys.stderr) as bar:
        if workers == 1 or records < (INPROCESS_BELOW if inprocess_below is None else inprocess_below):
            return combine(map(_sum_range_task, tasks), bar)
        return _in_workers(tasks, workers, bar)


def _in_workers(tasks: list[tuple[str, KeyRange]], workers: int, bar: ProgressBar) -> DbMean:
    """The ranges in worker processes, their sums taken in key order (so the first odd key is found first).
    A pool of futures, not multiprocessing.Pool: a worker killed (out of memory, a decoder crash) breaks it
    with an error, where Pool would wait for the lost task for ever."""
    # fork: this process has used no OpenCV (only the workers decode), so no thread pool is inherited
    pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context("fork"), initializer=_worker_start)
    try:
        return combine(pool.map(_sum_range_task, tasks), bar)
    except BrokenProcessPool:
        raise PipelineError("a worker process died while taking the mean (out of memory, or a decoder crash "
                            "on a damaged record?)") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # after an error or Ctrl-C: no range is started


def render_means(result: DbMean) -> str:
    """compute_image_mean's lines: channel count, then each channel's mean (C++ stream format, %g)."""
    lines = [f"Number of channels: {result.shape.channels}"]
    lines += [f"mean_value channel [{c}]:{value:g}" for c, value in enumerate(result.channel_means())]
    return "\n".join(lines)


def mean_jpg_path(output: Path) -> Path | None:
    """mean.jpg comes with a .binaryproto output, under the same stem; with no other name."""
    return output.with_suffix(".jpg") if output.suffix == ".binaryproto" else None


def check_output_path(output: Path) -> None:
    if output.is_dir():
        raise UsageError(f"OUTPUT_FILE is a folder: {output} (give a file name, such as {output / 'mean.binaryproto'})")
    if not output.parent.is_dir():
        raise UsageError(f"folder not found for the output file: {output.parent}")
    if not os.access(output.parent, os.W_OK):  # a read-only disk (EROFS holds for root too): before the work
        raise UsageError(f"cannot write in {output.parent} (read-only, or not yours to write): give an OUTPUT_FILE "
                         "in a folder that can be written")


def write_outputs(result: DbMean, output: Path, again: str = "etl mean") -> list[Path]:
    """The BlobProto (num=1, CHW float32, BGR for colour), and its picture beside a .binaryproto; each whole or
    not at all (a Caffe run started meanwhile never reads half a file). A write that fails is one line and leaves
    no temporary file; again: the command that writes them, for the advice."""
    check_output_path(output)
    mean = result.mean()
    files = [(output, encode_blobproto(mean))]
    jpg = mean_jpg_path(output)
    if jpg is not None and result.shape.channels in (1, 3, 4):
        files.append((jpg, _picture(mean, result.shape.channels)))
    for path, data in files:
        try:
            fsync_write(path, data)
        except OSError as exc:
            path.with_name(path.name + ".tmp").unlink(missing_ok=True)
            raise PipelineError(write_failure(exc, path, again, "give an OUTPUT_FILE on a disk that can be "
                                                                "written")) from None
    return [path for path, _ in files]


def _picture(mean: np.ndarray, channels: int) -> bytes:
    """mean.jpg: rounded, as DIGITS' mean.jpg; RGB (an alpha plane, from PNG records, is left out)."""
    image = np.clip(np.rint(mean), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    picture = Image.fromarray(image[:, :, 0] if channels == 1 else image[:, :, 2::-1])
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def run_mean(db: str, output: str | None, workers: int | None = None, progress: bool = True) -> int:
    """`etl mean DB [OUTPUT_FILE]`: the means printed; the files written when OUTPUT_FILE is given.
    workers: None for every usable core."""
    if output is not None:
        check_output_path(Path(output))  # before the work, not after it
    with shared_around(db, "take the mean"):  # a database etl is writing, shard or whole, is not read meanwhile
        result = compute_mean(db, usable_cores() if workers is None else workers, progress)
    again = f"etl mean {db} {output}"
    written = write_outputs(result, Path(output), again) if output is not None else []
    print(render_means(result))
    if is_shard(Path(db)):  # one shard's mean is not the split's: said as etl verify says it, --quiet or not
        from etl.merge import one_shard_note

        print(f"etl mean: note: {one_shard_note(Path(db), 'mean', 'takes the mean of the whole split')}",
              file=sys.stderr)
    if progress:
        what = f"{plural(result.count, 'record')} of {result.shape}"
        print(f"etl mean: {what}" + (f"; wrote {', '.join(map(str, written))}" if written else ""), file=sys.stderr)
    return 0
