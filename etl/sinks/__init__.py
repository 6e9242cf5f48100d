"""Sinks: where a split's records, list lines and mean sums go; `open_sink` is the one place that picks the
database sink (a sharded sink goes beside LmdbSink and is chosen there)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from etl.messages import Record
from etl.sinks.checksums import ChecksumSink
from etl.sinks.lists import ListFiles
from etl.sinks.lmdb import LmdbSink
from etl.sinks.mean import MeanSink
from etl.throttle import TokenBucket

__all__ = ["ChecksumSink", "ListFiles", "LmdbSink", "MeanSink", "Sink", "open_sink"]


class Sink(Protocol):
    """What the writer's commit protocol asks of a split's database (see etl.writer.SplitWriter)."""

    throttled_seconds: float  # time spent waiting for the write budget

    def records(self) -> int:
        """Records committed so far, over all its environments (what a resume starts from)."""
        ...

    def add(self, records: Sequence[Record], first_index: int) -> None:
        """Queue records for the next commit; first_index is the first one's place in the split's write order."""
        ...

    def first_value(self) -> bytes | None:
        """The first committed record's value (etl imageset --check_size resumes against it)."""
        ...

    @property
    def pending(self) -> int: ...

    def commit(self, written: int) -> None:
        """Make the queued records durable; written: the split's record count after them."""
        ...

    def release_pages(self) -> None:
        """After a durable commit: let the page cache drop what it wrote (unless told to keep it)."""
        ...

    def close(self) -> int:
        """Sync and close; returns its map size in bytes (report.json's writer.map_size)."""
        ...


def open_sink(db_path: Path, sums_path: Path, budget: TokenBucket | None, keep_page_cache: bool,
              keys: str = "digits", sums_owed: bool = True) -> Sink:
    """The database sink for one split, with its checksum sidecar (train_db.sums); keys: how records are keyed
    (etl.sinks.lmdb.KEYS: DIGITS', a shard's, convert_imageset's); sums_owed: see ChecksumSink."""
    return ChecksumSink(LmdbSink(db_path, budget, keep_page_cache, keys), sums_path, sums_owed)
