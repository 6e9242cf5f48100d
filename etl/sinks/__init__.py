"""Sinks: where a split's records, list lines and mean sums go; `open_sink` is the one place that picks the
database sink (a sharded sink goes beside LmdbSink and is chosen there)."""

from __future__ import annotations

from pathlib import Path

from etl.sinks.lists import ListFiles
from etl.sinks.lmdb import LmdbSink
from etl.sinks.mean import MeanSink
from etl.throttle import TokenBucket

__all__ = ["ListFiles", "LmdbSink", "MeanSink", "open_sink"]


def open_sink(db_path: Path, budget: TokenBucket | None, keep_page_cache: bool) -> LmdbSink:
    """The database sink for one split."""
    return LmdbSink(db_path, budget, keep_page_cache)
