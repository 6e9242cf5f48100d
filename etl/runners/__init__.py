"""Runners: how a split's work gets done (this machine's processes today; a cluster beside it). `make_runner`
is the one place that picks one."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from etl.pagecache import CacheChoice
from etl.runners.local import LocalRunner
from etl.runners.shards import ShardedRunner
from etl.settings import Settings
from etl.sources.base import Split
from etl.stats import SplitStats


class Runner(Protocol):
    def run_split(self, split: Split, s: Settings, out: Path, cache: CacheChoice, progress: bool) -> SplitStats:
        """Convert one split into OUT (its database, list file, and the mean's sum); returns its figures."""
        ...


def make_runner(s: Settings, start_method: str | None = None) -> Runner:
    """The runner for these settings (a new runner is chosen here); it refuses settings it cannot run."""
    local = LocalRunner(start_method, s)
    return ShardedRunner(local) if s.shard_size else local


__all__ = ["LocalRunner", "Runner", "ShardedRunner", "make_runner"]
