"""Pipeline: the coordinator that wires sources, workers and writer together and runs each split."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import shutil
import signal
import time
from collections import deque
from multiprocessing import forkserver
from multiprocessing.connection import wait
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

from tqdm import tqdm

from etl.checkpoint import CHECKPOINT_DIR, Checkpoint, plan_digest
from etl.meansum import SumLayout
from etl.pagecache import CacheChoice, InputSize, choose_page_cache, estimate_input, free_memory_bytes
from etl.records import Progress, ResultsLink, Task
from etl.settings import Settings, UsageError
from etl.sources import Plan, Split, plan
from etl.stats import SplitStats, summary_text, write_report
from etl.throttle import MB, AdaptiveIO, Budgets, Caps, block_device
from etl.workers import NO_WRITER_EXIT, WorkerHandle, WorkerPool, WorkSpec, stop_signals_blocked
from etl.writer import END, Ready, WriterError, WriterSpec, WriterSummary, writer_main

DATASET_FILES = ("labels.txt", "train.txt", "val.txt", "mean.binaryproto", "mean.jpg", "report.json")
DATASET_DIRS = ("train_db", "val_db", CHECKPOINT_DIR)
POLL_SECONDS = 0.2
MAX_CHUNK_RETRIES = 3
PRELOAD = ["etl.workers", "etl.writer"]


def mp_context(start_method: str | None = None) -> BaseContext:
    """How worker and writer processes start.

    By default a forkserver with etl preloaded: children start from a clean single-threaded server.
    Plain fork is faster to start (~0.2 s per run) but only safe from a process that never used
    OpenCV's thread pool: a forked worker deadlocks on its first cv2 call when the parent's pool
    was busy (seen with `etl demo`, which draws its images with OpenCV). `etl convert` knows its
    coordinator never runs OpenCV and asks for fork. spawn where neither exists.
    """
    methods = mp.get_all_start_methods()
    if start_method == "fork" and "fork" in methods:
        return mp.get_context("fork")
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        forkserver.ensure_running()  # it imports the preload while the caller goes on (scanning)
        return ctx
    return mp.get_context("spawn")


class QuietTqdm(tqdm):
    """tqdm without its monitor thread: workers are forked while the bar is shown, and a fork
    should find no other thread running."""

    monitor_interval = 0


class PipelineError(Exception):
    """The run could not finish (the writer failed); the message says what happened."""


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or --on-error fail: the run stopped early with its work committed."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_output(s: Settings) -> None:
    """Refuse an unusable output folder before any work; never silently replace a dataset."""
    out = Path(s.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a folder")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {parent}: choose an output folder you can write to")
    if s.resume:
        if not (out / CHECKPOINT_DIR).is_dir():
            raise UsageError(f"nothing to resume in {out}: no checkpoint from an earlier run")
        return
    existing = [n for n in DATASET_FILES + DATASET_DIRS if (out / n).exists()]
    if existing and not s.overwrite:
        raise UsageError(f"{out} already holds a dataset ({existing[0]}): pass --resume to continue it "
                         "or --overwrite to replace it")


def prepare_output(s: Settings) -> Path:
    """Create the output folder, clearing an old dataset only when --overwrite said so."""
    out = Path(s.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    if not s.resume:
        for name in DATASET_FILES + DATASET_DIRS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    return out


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def convert(s: Settings, progress: bool = True, start_method: str | None = None) -> dict[str, Any]:
    """Build every database of the dataset; returns the report (also written to report.json).

    start_method: None (a forkserver, safe from any caller) or "fork" (see mp_context)."""
    check_output(s)
    ctx = mp_context(start_method)
    job = plan(s)
    out = prepare_output(s)
    checkpoint = Checkpoint(out)
    digests = {sp.name: plan_digest(sp.items) for sp in job.splits}
    if s.resume:
        checkpoint.check_resume(s.output_settings(), digests)
    else:
        checkpoint.start_job(s.output_settings(), digests)
    (out / "labels.txt").write_text("".join(f"{name}\n" for name in job.labels), encoding="utf-8",
                                    errors="surrogateescape")
    cache = page_cache_choice(s, job)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    done: list[SplitStats] = []
    try:
        for split in job.splits:
            done.append(SplitRun(split, s, out, progress, cache).run(ctx))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not any(sp.name == "val" for sp in job.splits):
        (out / "val.txt").write_text("")
    report = write_report(str(out), s.output_settings(), job.labels, done, job.notes, resumed=s.resume)
    if progress:
        print(summary_text(str(out), job.labels, done, job.notes))
    return report


def page_cache_choice(s: Settings, job: Plan) -> CacheChoice:
    """One choice for the whole job: its splits' data share the memory."""
    if s.page_cache != "auto":
        return choose_page_cache(s.page_cache, InputSize(0, 0), 0)
    sizes = [estimate_input(sp.sample_paths(), len(sp.items)) for sp in job.splits]
    total = InputSize(sum(z.total for z in sizes), sum(z.cached for z in sizes))
    return choose_page_cache("auto", total, free_memory_bytes())


def chunks(split: Split, size: int) -> list[Task]:
    items = split.items
    return [Task(k, tuple(items[start:start + size])) for k, start in enumerate(range(0, len(items), size))]


def exit_reason(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code == NO_WRITER_EXIT:
        return f"could not connect to the LMDB writer (exit code {code})"
    if code < 0:
        name = signal.Signals(-code).name
        return f"was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exited with code {code}"


def mean_layout(s: Settings, split: str) -> SumLayout | None:
    """The train split's images make the mean image; the others are not summed."""
    return SumLayout(s.width, s.height, s.channels) if split == "train" else None


def caps_for(s: Settings, split: str) -> Caps:
    def pick(value: dict[str, float] | None) -> float | None:
        return value.get(split) if value else None

    return Caps(pick(s.max_read_mbps), pick(s.max_write_mbps), pick(s.max_iops))


def death_reason(handle: WorkerHandle) -> str:
    # A dying process closes its pipes a moment before it can be reaped: wait for its exit code.
    handle.proc.join(10.0)
    return exit_reason(handle.proc.exitcode)


class SplitRun:
    """Feeds one split's chunks to the workers (who send results to the writer), follows the writer's
    progress, replaces lost workers."""

    def __init__(self, split: Split, s: Settings, out: Path, progress: bool, cache: CacheChoice) -> None:
        self.split, self.s, self.out, self.cache = split, s, out, cache
        self.tasks = chunks(split, s.chunk_size)
        self.workers = max(1, min(s.worker_count, len(self.tasks)))
        # Chunks ahead of the writer: bounds its reorder buffer, and leaves room for every worker's queue.
        self.window = (s.queue_depth + 2) * self.workers + 4
        self.stats = SplitStats(split.name, len(split.items), worker_count=self.workers)
        self.bar = QuietTqdm(total=len(split.items), desc=split.name, unit="img", disable=not progress,
                        smoothing=0.05, delay=0.1)
        self.caps = caps_for(s, split.name)
        self.last_io_update = 0.0
        self.retry: deque[Task] = deque()
        self.image_deaths: dict[int, int] = {}
        self.idle_losses = 0  # workers lost in a row with no image in hand and no chunk delivered
        self.chunk_deaths: dict[int, int] = {}

    def run(self, ctx: BaseContext) -> SplitStats:
        writer_in, self.to_writer = ctx.Pipe(duplex=False)  # the closing word ("done" or END)
        link = ResultsLink.new()  # workers' results go straight to the writer
        self.from_writer, writer_out = ctx.Pipe(duplex=False)
        wspec = WriterSpec(self.split.name, str(self.out), self.split.root, self.s.relative_paths,
                           self.s.commit_every, self.s.resume, mean=mean_layout(self.s, self.split.name),
                           keep_page_cache=not self.cache.drop_output, stop_at_failure=self.s.on_error == "fail")
        cpu0 = time.process_time()
        budgets = Budgets(ctx, self.caps)
        self.watchers = self._watchers(budgets)
        self.writer = ctx.Process(target=writer_main, args=(wspec, writer_in, writer_out, budgets.write, link),
                                  name="etl-writer", daemon=True)
        with stop_signals_blocked():
            self.writer.start()
        writer_in.close()
        writer_out.close()
        self.pool: WorkerPool | None = None
        try:
            ready = self._from_writer_until(Ready)
            self._take_ready(ready)
            spec = WorkSpec.for_split(self.s, self.split.name, self.split.root, not self.cache.drop_input)
            self.pool = WorkerPool(ctx, self.workers, spec, link, budgets, per_worker=self.s.queue_depth)
            self._feed_and_watch(ready.start_chunk)
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
            self._release_writer()
        self.stats.finish(summary, time.process_time() - cpu0)
        self.stats.io = {**self.caps.as_json(), "page_cache": self.cache.why,
                         "adaptive": {k: w.as_json() for k, w in self.watchers.items()}}
        return self.stats

    def _release_writer(self) -> None:
        """Close this split's pipes and process handle now, not whenever the garbage collector runs:
        a stale object closing its file descriptor later could hit a number since reused by the next
        split's pipes (in this process, or in a child forked while the object was still around)."""
        if self.writer.is_alive():
            self.writer.kill()
        self.writer.join(5.0)
        for conn in (self.to_writer, self.from_writer):
            conn.close()
        try:
            self.writer.close()
        except ValueError:
            pass  # still running after a kill and 5 s: leave it to the OS

    def _watchers(self, budgets: Budgets) -> dict[str, AdaptiveIO]:
        """--adaptive-io: one watcher per direction, on the device that holds its files."""
        if not self.s.adaptive_io:
            return {}
        return {
            "read": AdaptiveIO(budgets.read, block_device(self.split.root), budgets.read.rate.value,
                               self.s.io_target),
            "write": AdaptiveIO(budgets.write, block_device(str(self.out)), budgets.write.rate.value,
                                self.s.io_target),
        }

    def _take_ready(self, ready: Ready) -> None:
        st = self.stats
        st.written, st.failures, st.warnings = ready.state.records, list(ready.skipped), list(ready.warned)
        st.bytes_read, st.stage_seconds = ready.state.bytes_read, dict(ready.state.stage_seconds)
        st.resumed_from, st.resumed_bytes_read = ready.state.records, ready.state.bytes_read
        self.bar.update(st.written + len(st.failures))

    def _feed_and_watch(self, start_chunk: int) -> None:
        assert self.pool is not None
        self.next_new = self.written = start_chunk
        while self.written < len(self.tasks):
            self._issue()
            handles = {h.conn: h for h in self.pool.handles}
            sentinels = {h.proc.sentinel: h for h in self.pool.handles}
            ready = wait([*handles, *sentinels, self.from_writer, self.writer.sentinel], timeout=POLL_SECONDS)
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
        while (self.retry or (self.next_new < len(self.tasks) and self.next_new - self.written < self.window)):
            handle = self.pool.free()
            if handle is None:
                return
            if self.retry:
                handle.give(self.retry.popleft())
            else:
                handle.give(self.tasks[self.next_new])
                self.next_new += 1

    def _delivered(self, handle: WorkerHandle) -> None:
        """A worker sent a chunk to the writer: it has room for another task."""
        try:
            handle.conn.recv()
        except (EOFError, OSError):
            self._lost(handle, death_reason(handle))
            return
        handle.tasks.popleft()
        self.idle_losses = 0

    def _send_to_writer(self, data: bytes) -> None:
        try:
            with stop_signals_blocked():  # a Ctrl-C half-way through a message would wedge the writer
                self.to_writer.send_bytes(data)
        except OSError:  # the writer is gone: its last message says why
            self.writer.join(2.0)
            self._drain_writer()
            raise PipelineError(f"the LMDB writer {exit_reason(self.writer.exitcode)}; run again with --resume") \
                from None

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
        no_writer = handle.proc.exitcode == NO_WRITER_EXIT
        self.stats.worker_losses.append(reason)
        self.idle_losses = 0 if item >= 0 else self.idle_losses + 1
        if self.idle_losses > 2 * self.workers + 3:  # not an image's fault: replacing them would loop for ever
            self._stop_early()
            raise PipelineError(f"workers keep stopping before they convert anything ({self.idle_losses} in a "
                                f"row; the last one {reason}); the database holds its last commit: once the cause is "
                                "fixed, run the same command with --resume")
        held = self.pool.replace(handle)
        if held and not no_writer:  # a worker that never reached the writer held its chunk blamelessly
            held[0] = self._after_death(held[0], item, reason)
        self.retry.extendleft(reversed(held))

    def _after_death(self, task: Task, item: int, reason: str) -> Task:
        give_up = dict(task.give_up)
        if any(it.index == item for it in task.items):
            self.image_deaths[item] = self.image_deaths.get(item, 0) + 1
            if self.image_deaths[item] >= 2:
                give_up[item] = f"worker process failed twice on this image (last: it {reason})"
        else:
            self.chunk_deaths[task.chunk_id] = self.chunk_deaths.get(task.chunk_id, 0) + 1
            if self.chunk_deaths[task.chunk_id] >= MAX_CHUNK_RETRIES:
                give_up.update({it.index: f"worker process failed repeatedly (last: it {reason})"
                                for it in task.items})
        return task._replace(give_up=give_up)

    def _check_hung(self) -> None:
        assert self.pool is not None
        for handle in list(self.pool.handles):
            item, seconds = handle.image_in_hand()
            if item >= 0 and seconds > self.s.image_timeout:
                handle.proc.kill()
                handle.proc.join(2.0)
                self._lost(handle, f"hung over {self.s.image_timeout:g} s on one image (--image-timeout)")

    def _writer_message(self) -> Any:
        """The writer's next message; errors raise, progress is taken (returns None), the rest is returned."""
        try:
            msg = self.from_writer.recv()
        except (EOFError, OSError):
            self.writer.join(2.0)
            raise PipelineError(f"the LMDB writer {exit_reason(self.writer.exitcode)}; the database holds its "
                                "last commit: run the same command with --resume") from None
        if isinstance(msg, WriterError):
            raise PipelineError(msg.message)
        if isinstance(msg, Progress):
            self._take(msg)
            return None
        return msg

    def _drain_writer(self) -> None:
        while self.from_writer.poll():
            msg = self._writer_message()
            if isinstance(msg, WriterSummary):  # it saw the end of its input before we sent it
                raise PipelineError(f"the LMDB writer stopped early after {msg.written} records (chunk "
                                    f"{self.written} of {len(self.tasks)}, input ended by: {msg.ended_by}); "
                                    "run the same command with --resume")
        if self.writer.exitcode is not None and not self.from_writer.poll():
            raise PipelineError(f"the LMDB writer {exit_reason(self.writer.exitcode)}; run again with --resume")

    def _take(self, msg: Progress) -> None:
        self.stats.take(msg)
        self.written += 1
        self.bar.update(msg.written + len(msg.failures))
        if msg.failures:
            if self.s.on_error == "fail":
                bad = msg.failures[0]
                raise Interrupted(f"stopped at the first bad file (--on-error fail): {bad.path}: {bad.reason}", 1)

    def _from_writer_until(self, kind: type) -> Any:
        """Wait for the writer's next message of `kind`, taking progress on the way."""
        while True:
            if not self.from_writer.poll(POLL_SECONDS):
                if self.writer.exitcode is not None:
                    raise PipelineError(f"the LMDB writer {exit_reason(self.writer.exitcode)}")
                continue
            msg = self._writer_message()
            if isinstance(msg, kind):
                return msg

    def _finish(self, complete: bool) -> WriterSummary:
        if self.pool is not None:
            self.pool.stop()
        # One closing word, never two: the writer finishes on "done" and may be gone before a second
        # message arrives, which then fails with a broken pipe (it did, now and then, on resume).
        self._send_to_writer(pickle.dumps("done") if complete else END)
        summary = self._from_writer_until(WriterSummary)
        self.writer.join(10.0)
        return summary

    def _stop_early(self) -> None:
        """Kill the workers, let the writer commit every chunk it can write in order."""
        if self.pool is not None:
            self.pool.kill()
            self.pool = None
        try:
            if self.writer.is_alive():
                self.stats.writer = self._finish(complete=False)
        except (PipelineError, Interrupted, KeyboardInterrupt, OSError):
            pass

    def _interrupt_message(self, what: str) -> str:
        if self.stats.writer is None:  # the writer did not finish: only its last commit is known to hold
            return (f"{what}: {self.split.name}_db holds its last commit; run the same command with --resume "
                    "to continue")
        return (f"{what}: {self.split.name} has {self.stats.writer.written:,d} of {len(self.split.items):,d} "
                "images written and committed; run the same command with --resume to continue")
