"""Reader: any Caffe Datum LMDB (etl's, DIGITS', Caffe's) as a Python sequence of (HWC array, label); a PyTorch
Dataset as is."""

from __future__ import annotations

import bisect
import itertools
import json
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import lmdb
import numpy as np
from turbojpeg import TJPF_RGB, TurboJPEG

from etl.datum import Datum, decode_datum
from etl.datumpixels import JPEG_MAGIC, datum_planes, turbojpeg_pixels

Sample = tuple[np.ndarray, int]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class DamagedDatabase(Exception):
    """The database's files are damaged (data.mdb cut short, or not LMDB at all): reading it would fail or,
    past the end of a cut file, kill the process with SIGBUS."""


def open_checked(path: str, **options: Any) -> lmdb.Environment:
    """Open an environment read-only, refusing a data.mdb shorter than its own last page: LMDB maps the file
    and would die with SIGBUS on the first read past its end."""
    data = os.path.join(path, "data.mdb")
    size = os.path.getsize(data)
    if size == 0:
        raise DamagedDatabase(f"{data} is empty (cut short to 0 bytes)")
    try:
        env = lmdb.open(path, readonly=True, lock=False, **options)
    except lmdb.InvalidError as exc:
        raise DamagedDatabase(f"{data} is not an LMDB database, or cut short inside its header ({exc})") from None
    end = (env.info()["last_pgno"] + 1) * env.stat()["psize"]  # from the meta page: inside the file's first pages
    if size < end:
        env.close()
        raise DamagedDatabase(f"{data} is cut short: {size:,d} bytes, but its pages run to byte {end:,d}; "
                              "copy it again or convert again")
    return env


def datum_pixels(datum: Datum, tj: TurboJPEG | None = None) -> np.ndarray:
    """The record's image as (H, W, C), RGB order for 3 channels: uint8, or float32 for a float_data record.

    An encoded record decodes as its `channels` says (3: RGB, 1: gray); with another value, as the 0 that Caffe's
    convert_imageset writes (it stores no size), in the image's own mode: gray stays one channel, colour is RGB
    (an alpha channel is dropped). A raw record is its CHW planes, BGR for 3 channels, turned to HWC RGB."""
    if not datum.encoded:
        return _raw_pixels(datum)
    if not datum.data:
        raise ValueError("record is marked encoded but holds no data")
    gray = {1: True, 3: False}.get(datum.channels)
    if datum.data.startswith(JPEG_MAGIC) and tj is not None:
        pixels = turbojpeg_pixels(datum.data, tj, TJPF_RGB, gray)
        if pixels is not None:
            return pixels
    if gray is None:
        gray = _png_is_gray(datum.data)
    flag = {True: cv2.IMREAD_GRAYSCALE, False: cv2.IMREAD_COLOR, None: cv2.IMREAD_ANYCOLOR}[gray]
    img = cv2.imdecode(np.frombuffer(datum.data, dtype=np.uint8), flag)
    if img is None:
        raise ValueError("record data is not a decodable image")
    return img[:, :, ::-1].copy() if img.ndim == 3 else img[:, :, None]


def _raw_pixels(datum: Datum) -> np.ndarray:
    """Raw CHW planes (uint8 `data`, or float32 `float_data` when data is empty) as HWC, RGB for 3 channels."""
    try:
        hwc = datum_planes(datum)
    except ValueError as exc:
        raise ValueError(f"record {exc}") from None
    return np.ascontiguousarray(hwc[:, :, ::-1] if datum.channels == 3 else hwc)


def _png_is_gray(data: bytes) -> bool | None:
    """True for a gray PNG (colour type 0, or 4: gray with alpha), False for another PNG; None for other formats,
    whose own mode OpenCV keeps (IMREAD_ANYCOLOR; it would make gray-with-alpha colour)."""
    if not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR" or len(data) < 26:
        return None
    return data[25] in (0, 4)


SHARD_MANIFEST = "manifest.json"  # etl.runners.shards.MANIFEST: a split written as shards
INDEX_STRIDE = 64  # the position index keeps every 64th key: 20,000 keys for ImageNet's 1.28 M records


class SharedEnvironments:
    """This process's read-only environments, one per data.mdb, shared by every dataset reading it: py-lmdb
    refuses a second open of the same files in one process (it knows them by device and inode, as this does).
    Held weakly: an environment closes when the last dataset using it closes or goes. After a fork the
    parent's are closed unused, never read (LMDB environments must not be used across fork()), and opened
    again on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._open: weakref.WeakValueDictionary[tuple[int, int], lmdb.Environment] = weakref.WeakValueDictionary()

    def get(self, path: str) -> lmdb.Environment:
        """The environment of the database at `path`, opened unless a dataset of this process has it open."""
        key = self._identity(path)
        with self._lock:
            self._drop_inherited()
            env = self._open.get(key)
            if env is None:
                env = open_checked(path, readahead=False, max_readers=512)
                self._open[key] = env
            return env

    def find(self, path: str) -> lmdb.Environment | None:
        """The environment this process's datasets have open on the database at `path`, if they have one: a
        one-off reader (etl verify, etl mean) must use it, as py-lmdb refuses to open the files again."""
        key = self._identity(path)
        with self._lock:
            self._drop_inherited()
            return self._open.get(key)

    @staticmethod
    def _identity(path: str) -> tuple[int, int]:
        st = os.stat(os.path.join(path, "data.mdb"))
        return st.st_dev, st.st_ino

    def _drop_inherited(self) -> None:
        if self._pid != os.getpid():
            for env in list(self._open.values()):
                env.close()  # frees py-lmdb's record of the files, so this process can open them again
            self._open.clear()
            self._pid = os.getpid()

    def after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it at the fork


# Per process by nature, as py-lmdb's own record of open environments is: the one piece of module state.
ENVIRONMENTS = SharedEnvironments()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=ENVIRONMENTS.after_fork)


class LmdbDataset:
    """Random access and iteration over one database; opens the environment lazily in each process, shared
    with the process's other datasets on the same files, and raises DamagedDatabase on opening one whose
    data.mdb is cut short. `ds[i]` is the i-th record in key order, whatever the keys' numbers (Caffe leaves
    a skipped image's number unused). A folder of shards (--shard-size) opens as a ShardedDataset: the same
    interface over the shards in write order."""

    def __new__(cls, path: str | os.PathLike[str] | None = None,
                transform: Callable[[np.ndarray], Any] | None = None) -> Any:
        # path None: unpickling (a DataLoader's worker), which makes the instance without arguments
        if cls is LmdbDataset and path is not None and os.path.isfile(os.path.join(os.fspath(path), SHARD_MANIFEST)):
            return ShardedDataset(path, transform)
        return super().__new__(cls)

    def __init__(self, path: str | os.PathLike[str], transform: Callable[[np.ndarray], Any] | None = None) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(os.path.join(self.path, "data.mdb")):
            raise FileNotFoundError(f"no LMDB database at {self.path}")
        self.transform = transform
        self._env: lmdb.Environment | None = None
        self._tj: TurboJPEG | None = None
        self._pid = -1
        self._index: list[bytes] | None = None  # every INDEX_STRIDE-th key, read once on the first ds[i]

    def _open(self) -> lmdb.Environment:
        if self._env is not None and self._pid != os.getpid():
            self._env = None  # forked: the shared table closes the parent's environment in this process
        if self._env is None:
            self._env = ENVIRONMENTS.get(self.path)
            self._tj = TurboJPEG()
            self._pid = os.getpid()
        return self._env

    def __getstate__(self) -> dict[str, Any]:
        # the index travels (a few hundred KB at most): a spawned worker need not walk the keys again
        return {**self.__dict__, "_env": None, "_tj": None, "_pid": -1}

    def __len__(self) -> int:
        return int(self._open().stat()["entries"])

    def _key_index(self) -> list[bytes]:
        """Every INDEX_STRIDE-th key in key order: one walk over the keys (values are not read)."""
        if self._index is None:
            with self._open().begin() as txn:
                keys = txn.cursor().iternext(keys=True, values=False)
                self._index = [bytes(key) for key in itertools.islice(keys, 0, None, INDEX_STRIDE)]
        return self._index

    def datum(self, index: int) -> Datum:
        """The raw Datum of the record at place `index` in key order."""
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(f"record {index} out of range (database holds {size})")
        block, step = divmod(index, INDEX_STRIDE)
        index_keys = self._key_index()
        with self._open().begin(buffers=False) as txn:
            cursor = txn.cursor()
            found = block < len(index_keys) and cursor.set_key(index_keys[block])
            while found and step:
                found, step = cursor.next(), step - 1
            if not found:
                raise KeyError(f"record {index} is gone from {self.path}: the database changed since this dataset "
                               "first read its keys; open it again")
            return decode_datum(cursor.value())

    def __getitem__(self, index: int) -> Sample:
        datum = self.datum(index)
        return self._sample(datum)

    def _sample(self, datum: Datum) -> Sample:
        pixels = datum_pixels(datum, self._tj)
        return (self.transform(pixels) if self.transform else pixels), datum.label

    def items(self) -> Iterator[tuple[bytes, Datum]]:
        """(key, Datum) in key order: the order Caffe's Data layer reads."""
        for key, value in self.raw_items():
            yield key, decode_datum(value)

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, stored value) in key order, the value as it is on disk (what train_db.sums checks)."""
        with self._open().begin() as txn:
            for key, value in txn.cursor():
                yield bytes(key), bytes(value)

    def __iter__(self) -> Iterator[Sample]:
        for _, datum in self.items():
            yield self._sample(datum)

    def close(self) -> None:
        """Stop using the environment; it closes when no other dataset of this process is using it."""
        self._env = None


class ShardedDataset:
    """A split written as shards (OUT/train_db/00000-of-00029/, ...), read as one dataset in write order. A
    shard's keys carry each image's place in the whole write order (which skipped images leave unused); record
    i is found by its place in its shard, as LmdbDataset finds any record."""

    def __init__(self, path: str | os.PathLike[str], transform: Callable[[np.ndarray], Any] | None = None) -> None:
        self.path = os.fspath(path)
        with open(os.path.join(self.path, SHARD_MANIFEST), encoding="utf-8") as fh:
            manifest = json.load(fh)
        self.parts = [LmdbDataset(os.path.join(self.path, shard["name"]), transform) for shard in manifest["shards"]]
        self.starts = list(itertools.accumulate((shard["records"] for shard in manifest["shards"]), initial=0))

    def __len__(self) -> int:
        return self.starts[-1]

    def _locate(self, index: int) -> tuple[LmdbDataset, int]:
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(f"record {index} out of range (database holds {size})")
        k = bisect.bisect_right(self.starts, index) - 1
        return self.parts[k], index - self.starts[k]

    def datum(self, index: int) -> Datum:
        part, place = self._locate(index)
        return part.datum(place)

    def __getitem__(self, index: int) -> Sample:
        part, place = self._locate(index)
        return part[place]

    def items(self) -> Iterator[tuple[bytes, Datum]]:
        for part in self.parts:
            yield from part.items()

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        for part in self.parts:
            yield from part.raw_items()

    def __iter__(self) -> Iterator[Sample]:
        for part in self.parts:
            yield from part

    def close(self) -> None:
        for part in self.parts:
            part.close()
