"""LMDB sink: one environment per split (or shard), keys '%08d_%d' % (write index, label) (or a shard's, or
convert_imageset's), one transaction per commit."""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import lmdb

from etl.errors import UsageError
from etl.messages import Record
from etl.throttle import TokenBucket, drop_written_pages

INITIAL_MAP_SIZE = 1 << 30  # grows by doubling; the file is sparse, so this is not disk used
APPEND_LIMIT = 10**8  # '%08d' keys stay in byte order below this; append mode needs that


def digits_key(rec: Record, index: int) -> bytes:
    """DIGITS' key: the record's place among those written, and its label."""
    return b"%08d_%d" % (index, rec.label)


def item_key(rec: Record, index: int) -> bytes:
    """A shard's key: the image's place in the split's whole write order (which a skipped image leaves unused:
    a shard cannot know how many images the shards before it skipped), and its label."""
    return b"%08d_%d" % (rec.index, rec.label)


def caffe_key(rec: Record, index: int) -> bytes:
    """convert_imageset's key: the item's line in the (shuffled) list, which a skipped image leaves unused, and
    its path as listed."""
    return b"%08d_%s" % (rec.index, os.fsencode(rec.path))


def _open(path: Path) -> lmdb.Environment:
    def attempt() -> lmdb.Environment:
        return lmdb.open(str(path), map_size=INITIAL_MAP_SIZE, max_dbs=0, readahead=False)

    try:
        return attempt()
    except lmdb.InvalidError as exc:
        data = path / "data.mdb"
        if data.stat().st_size >= 2 * mmap.PAGESIZE:  # its two meta pages were written: it held commits
            raise UsageError(f"{path} is damaged ({exc}): convert again with --overwrite") from None
    # Cut short before its first commit (a full disk as it was created): it never held a record.
    for name in ("data.mdb", "lock.mdb"):
        (path / name).unlink(missing_ok=True)
    return attempt()


KEYS = {"digits": digits_key, "item": item_key, "caffe": caffe_key}


class LmdbSink:
    """Puts records under their keys, commits a batch in one transaction, grows the map when it fills,
    and lets the kernel drop what a synced commit wrote."""

    def __init__(self, path: Path, budget: TokenBucket | None = None, keep_page_cache: bool = False,
                 keys: str = "digits") -> None:
        self.path, self.budget, self.keep_page_cache = path, budget, keep_page_cache
        self.key = KEYS[keys]
        path.mkdir(parents=True, exist_ok=True)
        # LMDB's defaults: sync and metasync on, writemap off. Every commit is durable before the
        # checkpoint names it, so not even a power loss can leave the two disagreeing.
        self.env = _open(path)
        self.batch: list[tuple[bytes, bytes]] = []
        self.throttled_seconds = 0.0
        self.dropped_upto = 0  # data.mdb bytes already advised out of the page cache

    def records(self) -> int:
        """Records committed so far (what a resume starts from)."""
        return self.env.stat()["entries"]

    def add(self, records: Sequence[Record], first_index: int) -> None:
        """Queue records for the next commit, keyed by their place in the split's write order."""
        self.batch.extend((self.key(rec, first_index + i), rec.value) for i, rec in enumerate(records))

    def first_value(self) -> bytes | None:
        """The first committed record's value, if any."""
        with self.env.begin() as txn:
            cursor = txn.cursor()
            return bytes(cursor.value()) if cursor.first() else None

    @property
    def pending(self) -> int:
        return len(self.batch)

    def commit(self, written: int) -> None:
        """Put the batch in one durable transaction; written: the split's record count after it."""
        if self.budget is not None:
            self.throttled_seconds += self.budget.take(sum(len(v) for _, v in self.batch))
        append = written < APPEND_LIMIT
        while self.batch:
            try:
                with self.env.begin(write=True) as txn:
                    txn.cursor().putmulti(self.batch, dupdata=False, overwrite=True, append=append)
                self.batch.clear()
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def release_pages(self) -> None:
        """After a synced commit its pages are on disk: drop them from the page cache, unless kept."""
        if not self.keep_page_cache:
            self.dropped_upto = drop_written_pages(str(self.path / "data.mdb"), self.dropped_upto)

    def close(self) -> int:
        """Sync and close; returns the final map size."""
        self.env.sync(True)
        map_size = self.env.info()["map_size"]
        self.env.close()
        return map_size
