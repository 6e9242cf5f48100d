"""Runners: how a split's work gets done (this machine's processes; its shards one after the other; its shards
as Ray tasks). `make_runner` is the one place that picks one."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from etl.errors import UsageError
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
    if s.runner == "ray":
        try:
            from etl.runners.ray import RayRunner
        except ModuleNotFoundError as exc:
            if exc.name != "ray":
                raise
            raise UsageError("--runner ray needs Ray on this machine: pip install 'etl[ray]'") from None
        return RayRunner(s)
    local = LocalRunner(start_method, s)
    return ShardedRunner(local) if s.shard_size else local


def close_runner(runner: Runner) -> None:
    """Let a runner end what it started for the job (the Ray runner: the Ray it started); the others have none."""
    close = getattr(runner, "close", None)
    if close is not None:
        close()


__all__ = ["LocalRunner", "Runner", "ShardedRunner", "close_runner", "make_runner"]
