"""Shard processes: several shards of a split converted at once on this machine, each by a process of its own
(its own workers and writer, so that several writers commit at once), followed through their checkpoints."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from etl.errors import Interrupted, PipelineError, UsageError, describe_write_error
from etl.pagecache import CacheChoice
from etl.progress import ProgressBar
from etl.runners.local import LocalRunner
from etl.runners.shards import Shard, committed_images, convert_part, interrupted_text, shard_part
from etl.settings import Settings
from etl.sources.base import Split

POLL_SECONDS = 0.5


def _child(start_method: str, part: Split, shard: Shard, s: Settings, where: Path, cache: CacheChoice,
           conn: Connection) -> None:
    """A shard's own coordinator: its workers and writer, as a one-machine run of its items."""
    try:
        record = convert_part(LocalRunner(start_method, s), part, shard, s, where, cache, progress=False)
        conn.send(("done", record))
    except (UsageError, PipelineError) as exc:
        conn.send(("error", f"{type(exc).__name__}", str(exc)))
    except (Interrupted, KeyboardInterrupt):
        conn.send(("interrupted", "", ""))
    except OSError as exc:  # its done marker, a full disk above all: the advice the one-process run gives
        conn.send(("error", "PipelineError", describe_write_error(exc, str(where), "its files")))
    except Exception as exc:  # a defect: say which shard it stopped, and why
        conn.send(("error", "PipelineError", f"{type(exc).__name__}: {exc}"))


class ConcurrentShards:
    """Up to `at_once` shards in progress, each in a child process given its share of the workers; one bar for
    the split, fed by the shards' committed records."""

    def __init__(self, ctx: BaseContext, split: Split, s: Settings, folder: Path, cache: CacheChoice,
                 at_once: int) -> None:
        self.ctx, self.split, self.s, self.folder, self.cache, self.at_once = ctx, split, s, folder, cache, at_once
        self.share = replace(s, workers=max(1, s.worker_count // at_once))
        self.running: dict[Connection, tuple[BaseProcess, Shard]] = {}

    def run(self, shards: list[Shard], progress: bool) -> list[dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        waiting = list(shards)
        bar = ProgressBar(total=len(self.split.items), desc=self.split.name, unit="img", disable=not progress)
        try:
            while waiting or self.running:
                while waiting and len(self.running) < self.at_once:
                    self._start(waiting.pop(0))
                for conn in wait(list(self.running), timeout=POLL_SECONDS):
                    self._collect(conn, records)
                images = committed_images(self.split.name, shards, self.folder, self.s.chunk_size, set(records))
                bar.update(images - bar.n)  # update, not refresh: a bar in a log file writes at most every few s
        except KeyboardInterrupt:
            self._stop()
            raise Interrupted(interrupted_text(self.split, shards, self.folder, self.s.chunk_size, set(records)),
                              130) from None
        except BaseException:
            self._stop()
            raise
        finally:
            bar.close()
        return [records[shard.name] for shard in shards]

    def _start(self, shard: Shard) -> None:
        here, there = self.ctx.Pipe(duplex=False)
        where = self.folder / shard.name
        proc = self.ctx.Process(target=_child, name=f"etl-shard-{shard.name}",
                                args=(self.ctx.get_start_method(), shard_part(self.split, shard), shard, self.share,
                                      where, self.cache, there))
        proc.start()
        there.close()
        self.running[here] = (proc, shard)

    def _collect(self, conn: Connection, records: dict[str, dict[str, Any]]) -> None:
        proc, shard = self.running.pop(conn)
        try:
            word = conn.recv()
        except EOFError:
            word = ("error", "PipelineError", "its process ended without a word")
        proc.join()
        if word[0] == "done":
            records[shard.name] = word[1]
            return
        if word[0] == "interrupted":
            raise KeyboardInterrupt
        kind = UsageError if word[1] == "UsageError" else PipelineError
        raise kind(f"shard {shard.name} of {self.split.name}: {word[2]}")

    def _stop(self) -> None:
        """Each shard's coordinator stops as Ctrl-C stops a run: its commit stands."""
        for proc, _ in self.running.values():
            if proc.is_alive() and proc.pid is not None:
                try:
                    os.kill(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 60
        for proc, _ in self.running.values():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
        self.running.clear()
