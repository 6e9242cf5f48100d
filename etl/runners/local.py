"""Local runner: one machine's processes: a worker pool fed chunk by chunk, one writer process, and the
event loop that follows them, replaces lost workers and kills hung ones."""

from __future__ import annotations

import time
from multiprocessing.connection import wait
from multiprocessing.context import BaseContext
from pathlib import Path

from etl.checkpoint import check_unchanged
from etl.converter import WorkSpec
from etl.errors import Interrupted, PipelineError, UsageError
from etl.layout import db_name
from etl.meansum import mean_layout
from etl.memory import check_memory, commit_records, window_chunks
from etl.messages import Progress, Ready, WriterSummary
from etl.pagecache import CacheChoice
from etl.procs import NO_WRITER_EXIT, exit_reason, mp_context
from etl.progress import ProgressBar
from etl.runners.ledger import ChunkLedger, TooManyLosses, chunks
from etl.runners.writer_process import POLL_SECONDS, WriterProcess
from etl.settings import Settings
from etl.sources.base import Reader, Split
from etl.stats import SplitStats
from etl.throttle import MB, AdaptiveIO, Budgets, Caps, block_device
from etl.workers import WorkerHandle, WorkerPool
from etl.writer import WriterSpec

BIG_CHECK = 50_000  # committed items above which the resume's check of them shows a bar of its own


def caps_for(s: Settings, split: str) -> Caps:
    def pick(value: dict[str, float] | None) -> float | None:
        return value.get(split) if value else None

    return Caps(pick(s.max_read_mbps), pick(s.max_write_mbps), pick(s.max_iops))


def death_reason(handle: WorkerHandle) -> str:
    # A dying process closes its pipes a moment before it can be reaped: wait for its exit code.
    handle.proc.join(10.0)
    return exit_reason(handle.proc.exitcode)


def writer_spec(split: Split, s: Settings, out: Path, cache: CacheChoice) -> WriterSpec:
    return WriterSpec(split.name, str(out), split.reader.list_prefix(s.relative_paths), commit_records(s), s.resume,
                      mean=None if not s.makes_mean else mean_layout(s.width, s.height, s.channels, split.name),
                      keep_page_cache=not cache.drop_output, stop_at_failure=s.on_error == "fail",
                      single_db=s.caffe_imageset or s.in_shard, keys=record_keys(s), check_size=s.check_size,
                      commit_bytes=s.max_buffer_mb * MB)


def record_keys(s: Settings) -> str:
    return "caffe" if s.caffe_imageset else "item" if s.in_shard else "digits"


class LocalRunner:
    """Runs each split on this machine's cores. Given the settings, it first checks that their buffers fit
    in this machine's memory, before any work; with --workers 0 it starts as many workers as fit
    (etl.memory.check_memory)."""

    def __init__(self, start_method: str | None = None, s: Settings | None = None) -> None:
        self.max_workers = check_memory(s).workers if s is not None else None
        self.ctx = mp_context(start_method)

    def run_split(self, split: Split, s: Settings, out: Path, cache: CacheChoice, progress: bool) -> SplitStats:
        return SplitRun(split, s, out, progress, cache, self.max_workers).run(self.ctx)


class SplitRun:
    """Feeds one split's chunks to the workers (who send results to the writer), follows the writer's
    progress, replaces lost workers."""

    def __init__(self, split: Split, s: Settings, out: Path, progress: bool, cache: CacheChoice,
                 max_workers: int | None = None) -> None:
        self.split, self.s, self.out, self.cache, self.progress = split, s, out, cache, progress
        self.tasks = chunks(split.items, s.chunk_size, split.give_up)
        self.workers = max(1, min(s.worker_count, max_workers or s.worker_count, len(self.tasks)))
        self.stats = SplitStats(split.name, len(split.items), worker_count=self.workers)
        self.bar = ProgressBar(total=len(split.items), desc=split.name, unit="img", disable=not progress,
                               smoothing=0.05, delay=0.1)
        self.caps = caps_for(s, split.name)
        self.last_io_update = 0.0
        self.pool: WorkerPool | None = None
        # Chunks ahead of the writer: bounds its reorder buffer, and leaves room for every worker's queue,
        # within --max-buffer-mb.
        self.ledger = ChunkLedger(self.tasks, window_chunks(s, self.workers, split.name == "train"), self.workers)

    def run(self, ctx: BaseContext) -> SplitStats:
        cpu0 = time.process_time()
        budgets = Budgets(ctx, self.caps)
        self.watchers = self._watchers(budgets)
        self.writer = WriterProcess(ctx, writer_spec(self.split, self.s, self.out, self.cache), self._take,
                                    budgets.write)
        try:
            ready = self.writer.ready()
            self._check_committed(ready)
            self._take_ready(ready)
            self.ledger.start_at(ready.start_chunk)
            spec = WorkSpec.for_split(self.s, self.split.name, self.split.reader, not self.cache.drop_input)
            self.pool = WorkerPool(ctx, self.workers, spec, self.writer.link, budgets, per_worker=self.s.queue_depth)
            self._feed_and_watch()
            summary = self._finish(complete=True)
        except KeyboardInterrupt:
            self._stop_early()
            raise Interrupted(self._interrupt_message("interrupted"), 130) from None
        except Interrupted:
            self._stop_early()
            raise
        finally:
            self.bar.close()
            if self.pool is not None:
                self.pool.kill()
            self.writer.release()
        self.stats.finish(summary, time.process_time() - cpu0)
        self.stats.io = {**self.caps.as_json(), "page_cache": self.cache.why,
                         "adaptive": {k: w.as_json() for k, w in self.watchers.items()}}
        return self.stats

    def _watchers(self, budgets: Budgets) -> dict[str, AdaptiveIO]:
        """--adaptive-io: one watcher per direction, on the device that holds its files."""
        if not self.s.adaptive_io:
            return {}
        return {
            "read": AdaptiveIO(budgets.read, self.split.reader.device(), budgets.read.rate.value, self.s.io_target),
            "write": AdaptiveIO(budgets.write, block_device(str(self.out)), budgets.write.rate.value,
                                self.s.io_target),
        }

    def _check_committed(self, ready: Ready) -> None:
        """--resume: the items of the committed chunks must be the files they were converted from; one stat
        each (1.28 M take seconds), before any new work. Chunks are cut as the first run cut them: the chunk
        size is part of a resumed run's identity, so the writer's chunk count names the same items here."""
        done = [item for task in self.tasks[:ready.start_chunk] for item in task.items]
        if ready.state.input_stamp is None or not done:
            return
        # Position 0: the split's own bar, made already, shows only once this one is gone.
        with ProgressBar(total=len(done), desc=f"{self.split.name}: checking converted images", unit="img",
                         position=0, leave=False, disable=not self.progress or len(done) <= BIG_CHECK) as bar:
            try:
                check_unchanged(self.split.name, self.split.reader, done, ready.state.input_stamp, bar.update)
            except UsageError:
                self._stop_early()  # the writer commits nothing: it has taken no chunk
                raise

    def _take_ready(self, ready: Ready) -> None:
        st = self.stats
        st.written, st.failures, st.warnings = ready.state.records, list(ready.skipped), list(ready.warned)
        st.bytes_read, st.stage_seconds = ready.state.bytes_read, dict(ready.state.stage_seconds)
        st.colour_conversions = dict(ready.state.colour_conversions)
        st.resumed_from, st.resumed_bytes_read = ready.state.records, ready.state.bytes_read
        self.bar.update(st.written + len(st.failures))

    def _feed_and_watch(self) -> None:
        assert self.pool is not None
        while not self.ledger.done:
            self._issue()
            handles = {h.conn: h for h in self.pool.handles}
            sentinels = {h.proc.sentinel: h for h in self.pool.handles}
            ready = wait([*handles, *sentinels, self.writer.from_writer, self.writer.sentinel], timeout=POLL_SECONDS)
            for conn in ready:
                if conn in handles:
                    self._delivered(handles[conn])
            for sentinel in ready:
                if sentinel in sentinels and sentinels[sentinel] in self.pool.handles:
                    self._lost(sentinels[sentinel], death_reason(sentinels[sentinel]))
            self._check_hung()
            self._drain_writer()
            self._watch_io()
        self._watch_io(force=True)  # the bar's last figures cover the whole run

    def _watch_io(self, force: bool = False) -> None:
        now = time.monotonic()
        if now - self.last_io_update < 0.5 and not force:
            return
        self.last_io_update = now
        done = {"read": self.stats.bytes_read, "write": self.stats.bytes_written}
        for direction, watcher in self.watchers.items():
            watcher.observe(now, done[direction])
        elapsed = max(now - self.stats.started, 1e-3)
        self.bar.set_postfix(read=f"{self.stats.bytes_read / elapsed / MB:.1f}MB/s",
                             write=f"{self.stats.bytes_written / elapsed / MB:.1f}MB/s",
                             skipped=len(self.stats.failures), refresh=False)

    def _issue(self) -> None:
        assert self.pool is not None
        while self.ledger.has_work():
            handle = self.pool.free()
            if handle is None:
                return
            handle.give(self.ledger.next_task())

    def _delivered(self, handle: WorkerHandle) -> None:
        """A worker sent a chunk to the writer: it has room for another task."""
        try:
            handle.conn.recv()
        except (EOFError, OSError):
            self._lost(handle, death_reason(handle))
            return
        handle.tasks.popleft()
        self.ledger.delivered()

    def _lost(self, handle: WorkerHandle, reason: str) -> None:
        """A worker died or hung: replace it; retry its image once, then report it as failed."""
        assert self.pool is not None
        while handle.tasks and handle.conn.poll():  # chunks it delivered before dying still count
            try:
                handle.conn.recv()
            except (EOFError, OSError):
                break
            handle.tasks.popleft()
        item, _ = handle.image_in_hand()
        self.stats.worker_losses.append(reason)
        try:
            self.ledger.count_loss(item, reason)
        except TooManyLosses as exc:
            self._stop_early()
            raise PipelineError(f"{exc}; the database holds its last commit: once the cause is fixed, run the "
                                "same command with --resume") from None
        blameless = handle.proc.exitcode == NO_WRITER_EXIT  # it never reached the writer: its chunk is not to blame
        self.ledger.requeue(self.pool.replace(handle), item, reason, blameless)

    def _check_hung(self) -> None:
        assert self.pool is not None
        for handle in list(self.pool.handles):
            item, seconds = handle.image_in_hand()
            if item >= 0 and seconds > self.s.image_timeout:
                handle.proc.kill()
                handle.proc.join(2.0)
                self._lost(handle, f"hung over {self.s.image_timeout:g} s on one image (--image-timeout)")

    def _drain_writer(self) -> None:
        early = self.writer.drain()
        if early is not None:  # it saw the end of its input before we sent it
            raise PipelineError(f"the LMDB writer stopped early after {early.written} records (chunk "
                                f"{self.ledger.written} of {len(self.tasks)}, input ended by: {early.ended_by}); "
                                "run the same command with --resume")

    def _take(self, msg: Progress) -> None:
        self.stats.take(msg)
        self.ledger.written_one()
        self.bar.update(msg.written + len(msg.failures))
        if msg.failures and self.s.on_error == "fail":
            bad = msg.failures[0]
            raise Interrupted(f"stopped at the first bad file (--on-error fail): {bad.path}: {bad.reason}; "
                              + bad_file_advice(self.split.reader), 1)

    def _finish(self, complete: bool) -> WriterSummary:
        if self.pool is not None:
            self.pool.stop()
        return self.writer.finish(complete)

    def _stop_early(self) -> None:
        """Kill the workers, let the writer commit every chunk it can write in order."""
        if self.pool is not None:
            self.pool.kill()
            self.pool = None
        try:
            if self.writer.is_alive():
                self.stats.writer = self.writer.finish(complete=False)
        except (PipelineError, Interrupted, KeyboardInterrupt, OSError):
            pass

    def _interrupt_message(self, what: str) -> str:
        name = self.split.name
        if self.stats.writer is None:  # the writer did not finish: only its last commit is known to hold
            return f"{what}: {db_name(name)} holds its last commit; run the same command with --resume to continue"
        return (f"{what}: {name} has {self.stats.writer.written:,d} of {len(self.split.items):,d} "
                "images written and committed; run the same command with --resume to continue")


def bad_file_advice(reader: Reader) -> str:
    """What to do after --on-error fail stopped at a bad image: advice that works when followed literally."""
    if not reader.fixable():
        return ("it is inside an archive, which cannot be fixed in place: to skip it and report it, run the "
                "same command with --resume --on-error skip")
    return ("fix or replace that file, then run the same command with --resume (to leave it out instead, "
            "remove it and convert again with --overwrite)")
