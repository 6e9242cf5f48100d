"""Reader: a DIGITS/Caffe LMDB as a Python sequence of (HWC RGB uint8 array, label); a PyTorch Dataset as is."""

from __future__ import annotations

import bisect
import itertools
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import lmdb
import numpy as np
from turbojpeg import TJPF_GRAY, TJPF_RGB, TurboJPEG

from etl.datum import Datum, decode_datum

Sample = tuple[np.ndarray, int]


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
    """The record's image as (H, W, C) uint8, RGB order for 3 channels."""
    if not datum.encoded:
        chw = np.frombuffer(datum.data, dtype=np.uint8).reshape(datum.channels, datum.height, datum.width)
        hwc = chw.transpose(1, 2, 0)
        return np.ascontiguousarray(hwc[:, :, ::-1] if datum.channels == 3 else hwc)
    if datum.data[:2] == b"\xff\xd8" and tj is not None:
        fmt = TJPF_RGB if datum.channels == 3 else TJPF_GRAY
        return tj.decode(datum.data, pixel_format=fmt)
    flag = cv2.IMREAD_COLOR if datum.channels == 3 else cv2.IMREAD_GRAYSCALE
    img = cv2.imdecode(np.frombuffer(datum.data, dtype=np.uint8), flag)
    if img is None:
        raise ValueError("record data is not a decodable image")
    return img[:, :, ::-1].copy() if img.ndim == 3 else img[:, :, None]


SHARD_MANIFEST = "manifest.json"  # etl.runners.shards.MANIFEST: a split written as shards


class LmdbDataset:
    """Random access and iteration over one database; opens the environment lazily in each process, and raises
    DamagedDatabase on opening one whose data.mdb is cut short. A folder of shards (--shard-size) opens as a
    ShardedDataset: the same interface over the shards in write order."""

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

    def _open(self) -> lmdb.Environment:
        if self._env is not None and self._pid != os.getpid():
            # Forked (a DataLoader worker): LMDB environments must not be used across fork(), and
            # py-lmdb refuses a second open of the same files, so drop the inherited one first.
            self._env.close()
            self._env = None
        if self._env is None:
            self._env = open_checked(self.path, readahead=False, max_readers=512)
            self._tj = TurboJPEG()
            self._pid = os.getpid()
        return self._env

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_env": None, "_tj": None, "_pid": -1}

    def __len__(self) -> int:
        return int(self._open().stat()["entries"])

    def datum(self, index: int) -> Datum:
        """The raw Datum of record `index` (keys are '%08d_<label>', so a range lookup finds it)."""
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(f"record {index} out of range (database holds {size})")
        prefix = b"%08d_" % index
        with self._open().begin(buffers=False) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix) or not cursor.key().startswith(prefix):
                raise KeyError(f"no record with key prefix {prefix.decode()}")
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

    def value(self, key: bytes) -> bytes | None:
        with self._open().begin() as txn:
            return txn.get(key)

    def keys(self) -> list[bytes]:
        with self._open().begin() as txn:
            return [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


class ShardedDataset:
    """A split written as shards (OUT/train_db/00000-of-00029/, ...), read as one dataset in write order. A
    shard's keys carry each image's place in the whole write order (which skipped images leave unused), so
    random access goes through each shard's key list, read once when first needed."""

    def __init__(self, path: str | os.PathLike[str], transform: Callable[[np.ndarray], Any] | None = None) -> None:
        self.path = os.fspath(path)
        with open(os.path.join(self.path, SHARD_MANIFEST), encoding="utf-8") as fh:
            manifest = json.load(fh)
        self.parts = [LmdbDataset(os.path.join(self.path, shard["name"]), transform) for shard in manifest["shards"]]
        self.starts = list(itertools.accumulate((shard["records"] for shard in manifest["shards"]), initial=0))
        self._keys: dict[int, list[bytes]] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def _locate(self, index: int) -> tuple[LmdbDataset, bytes]:
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(f"record {index} out of range (database holds {size})")
        k = bisect.bisect_right(self.starts, index) - 1
        if k not in self._keys:
            self._keys[k] = self.parts[k].keys()
        return self.parts[k], self._keys[k][index - self.starts[k]]

    def datum(self, index: int) -> Datum:
        part, key = self._locate(index)
        value = part.value(key)
        if value is None:
            raise KeyError(f"no record {key.decode()} in {part.path}")
        return decode_datum(value)

    def __getitem__(self, index: int) -> Sample:
        part, _ = self._locate(index)
        return part._sample(self.datum(index))

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
