"""Writer: the one process that owns a split's sinks; it takes chunks in order and commits them by the
protocol of etl.checkpoint."""

from __future__ import annotations

import os
import pickle
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Listener
from typing import Any

from etl.checkpoint import Checkpoint, add_stamps
from etl.datum import decode_datum
from etl.door import accept_workers, receive_closing_word
from etl.errors import UsageError, describe_write_error
from etl.layout import Layout, skip_log_name
from etl.meansum import SumLayout
from etl.messages import (
    ChunkResult,
    Done,
    Progress,
    Ready,
    Record,
    ResultsLink,
    SplitState,
    WriterError,
    WriterSummary,
    add_counts,
)
from etl.procs import child_signals, peak_rss_kb
from etl.sinks import ListFiles, MeanSink, open_sink
from etl.throttle import SharedState, TokenBucket


@dataclass(frozen=True)
class WriterSpec:
    """Where one split's outputs go, and how often to commit."""

    split: str
    out_dir: str
    list_prefix: str  # what goes before each item path in the list file
    commit_every: int
    resume: bool
    mean: SumLayout | None  # the train split sums its pixels for the mean image
    keep_page_cache: bool = False
    stop_at_failure: bool = False  # --on-error fail: a chunk with a bad file is not written, nor any after it
    single_db: bool = False  # OUT is the LMDB itself, etl's files in its .etl/ (etl imageset, a shard): etl.layout
    keys: str = "digits"  # how records are keyed: etl.sinks.lmdb.KEYS
    check_size: bool = False  # etl imageset --check_size: every record the size of the first
    commit_bytes: int = 0  # also commit once the pending records hold this many bytes (0: no bound)


class SizeCheck:
    """convert_imageset's --check_size: every record holds an image of the first one's size; the run stops at
    the first that does not (Caffe aborts there too)."""

    def __init__(self) -> None:
        self.first: tuple[int, int, int] | None = None

    def seed(self, first: bytes | None) -> None:
        """A resumed run checks against the first record its earlier runs wrote."""
        if first is not None:
            datum = decode_datum(first)
            self.first = (datum.channels, datum.height, datum.width)

    def check(self, records: list[Record]) -> None:
        for rec in records:
            datum = decode_datum(rec.value)
            size = (datum.channels, datum.height, datum.width)
            if self.first is None:
                self.first = size
            elif size != self.first:
                raise UsageError(f"--check_size: {rec.path} is {_size(size)}, the first image written is "
                                 f"{_size(self.first)}; give --resize_width and --resize_height, or leave out "
                                 "--check_size")


def _size(size: tuple[int, int, int]) -> str:
    return "{}x{}x{} (channels x height x width)".format(*size)


class SplitWriter:
    """Drives the split's sinks through the commit protocol: list and skip lines and the mean sum are
    saved first, then the pending state, then the database commit, then the state (see etl.checkpoint)."""

    def __init__(self, spec: WriterSpec, budget: TokenBucket | None = None) -> None:
        self.spec = spec
        self.checkpoint = Checkpoint(spec.out_dir)
        layout = Layout(spec.out_dir, single_db=spec.single_db)
        self.db = open_sink(layout.db(spec.split), layout.sums(spec.split), budget, spec.keep_page_cache, spec.keys,
                            self.checkpoint.sums_owed())
        self.lists = ListFiles(layout.list(spec.split), self.checkpoint.path(skip_log_name(spec.split)),
                               spec.list_prefix)
        self.sizes = SizeCheck() if spec.check_size else None
        self.pending_bytes = 0  # in the records awaiting the next commit
        self.mean = MeanSink(spec.mean, self.checkpoint, spec.split) if spec.mean is not None else None
        self.summary = WriterSummary()
        self.state = SplitState()
        self.label_counts: Counter[int] = Counter()
        self.ended_by: list[str] = []  # why the input ended, for the coordinator's diagnostics

    def open(self) -> Ready:
        """Start fresh, or pick up exactly where the last commit of an earlier run left off."""
        if self.spec.resume:
            self.state = self.checkpoint.state_for(self.spec.split, self.db.records())
            if self.mean is not None:
                self.mean.resume(self.state.chunks, required=self.state.records > 0)
        if self.sizes is not None:
            self.sizes.seed(self.db.first_value())
        skipped, warned = self.lists.open(self.spec.resume, self.state)
        self.summary.written = self.state.records
        self.label_counts.update({int(k): n for k, n in self.state.per_label.items()})
        return Ready(self.state.chunks, self.state, skipped, warned)

    def add(self, result: ChunkResult) -> None:
        t0 = time.perf_counter()
        if self.sizes is not None:
            self.sizes.check(result.records)
        self.db.add(result.records, self.summary.written)
        self.lists.add(result)
        chunk_bytes = 0
        for rec in result.records:
            chunk_bytes += len(rec.value)
            self.label_counts[rec.label] += 1
        self.summary.data_bytes += chunk_bytes
        self.pending_bytes += chunk_bytes
        self.summary.written += len(result.records)
        if self.mean is not None:
            self.mean.add(result)
        self.state.chunks = result.chunk_id + 1
        if self.state.input_stamp is not None:  # with chunks: each commit's stamp covers exactly its chunks
            self.state.input_stamp = add_stamps(self.state.input_stamp, result.input_stamp)
        self.state.bytes_read += result.bytes_read
        for stage, seconds in result.stage_seconds.items():
            self.state.stage_seconds[stage] += seconds
        add_counts(self.state.colour_conversions, result.colour_conversions)
        self.summary.put_seconds += time.perf_counter() - t0

    def per_label(self) -> dict[str, int]:
        return {str(label): n for label, n in sorted(self.label_counts.items())}

    def commit(self, complete: bool = False) -> None:
        if not self.db.pending and not self.lists.pending and not complete:
            return
        t0 = time.perf_counter()
        split, cp = self.spec.split, self.checkpoint
        self.lists.flush()
        if self.mean is not None:
            self.mean.save(self.state.chunks)
        self.state.records = self.summary.written
        self.state.per_label = self.summary.per_label = self.per_label()
        self.state.complete = complete
        cp.save_pending(split, self.state)
        self.db.commit(self.summary.written)
        self.pending_bytes = 0
        cp.promote_pending(split)
        self.db.release_pages()
        cp.drop_sums_except(split, {self.state.chunks})
        self.summary.commits += 1
        self.summary.commit_seconds += time.perf_counter() - t0

    def close(self, complete: bool) -> WriterSummary:
        self.commit(complete=complete)
        self.summary.map_size = self.db.close()
        self.summary.throttled_seconds = self.db.throttled_seconds
        self.lists.close()
        if complete and self.mean is not None and self.summary.written:
            self.summary.sum_chunks = self.state.chunks  # the last commit saved the complete sum
        return self.summary


def writer_main(spec: WriterSpec, data_conn: Any, progress_conn: Any, write_budget: SharedState | None = None,
                link: ResultsLink | None = None) -> None:
    """The writer's life: open the door for workers' results, announce where to start, write chunks in
    order, then its summary. Chunks come from the workers (link); the closing word comes on the data
    pipe, from the coordinator."""
    child_signals(ignore_sigterm=True)  # the coordinator decides when to stop
    cpu0 = time.process_time()  # a forkserver child has imported its target's module by now: not the writer's work
    try:
        writer = SplitWriter(spec, TokenBucket(write_budget) if write_budget is not None else None)
        ready = writer.open()
        listener = Listener(link.address, family="AF_UNIX", backlog=64) if link else None
        _tell(progress_conn, ready)
        complete = _write_in_order(writer, ready.start_chunk, data_conn, progress_conn, listener,
                                   link.authkey if link else b"")
        summary = writer.close(complete)
    except UsageError as exc:  # a checkpoint that cannot be resumed: its message says what to do
        _tell(progress_conn, WriterError(str(exc)))
        raise SystemExit(1) from None
    except Exception as exc:  # disk full, I/O error: the last commit stands; say why and stop
        _tell(progress_conn, WriterError(describe_write_error(exc, spec.out_dir)))
        raise SystemExit(1) from None
    summary.cpu_seconds = time.process_time() - cpu0
    summary.max_rss_kb = peak_rss_kb()
    summary.ended_by = "; ".join(writer.ended_by)
    _tell(progress_conn, summary)


def _tell(conn: Any, message: object) -> None:
    """Send to the coordinator, which may be gone (killed): then there is no one left to tell."""
    try:
        conn.send(message)
    except OSError:
        pass


def _write_in_order(writer: SplitWriter, next_chunk: int, data_conn: Any, progress_conn: Any,
                    listener: Listener | None = None, authkey: bytes = b"") -> bool:
    """Chunks in, in any order; written in chunk order. True when the coordinator said every chunk was
    delivered and none is pending."""
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=receive_closing_word, args=(data_conn, inbox, os.getppid(), writer.ended_by),
                     daemon=True).start()
    if listener is not None:
        threading.Thread(target=accept_workers, args=(listener, authkey, inbox), daemon=True).start()
    pending: dict[int, ChunkResult] = {}  # the reorder buffer; the coordinator bounds its size
    while (data := inbox.get()) is not None:
        if isinstance(data, Done):  # every chunk was sent
            writer.ended_by.append(f"'done' with {len(pending)} chunks pending")
            return not pending
        result: ChunkResult = pickle.loads(data)
        if result.chunk_id < next_chunk or result.chunk_id in pending:
            continue  # delivered twice: its worker died after sending it, and it was run again
        pending[result.chunk_id] = result
        while next_chunk in pending:
            if not _write_chunk(writer, pending.pop(next_chunk), progress_conn):
                return False
            next_chunk += 1
    return False  # stopped early (interrupt, error): commit what is complete, mark it incomplete


def _write_chunk(writer: SplitWriter, chunk: ChunkResult, progress_conn: Any) -> bool:
    if writer.spec.stop_at_failure and chunk.failures:
        # Not committed, so a resume converts this chunk again: a file fixed meanwhile goes in.
        writer.ended_by.append(f"a bad file in chunk {chunk.chunk_id} (--on-error fail)")
        _tell(progress_conn, _progress(chunk, written=0))
        return False
    writer.add(chunk)
    spec = writer.spec
    if writer.db.pending >= spec.commit_every or 0 < spec.commit_bytes <= writer.pending_bytes:
        writer.commit()
    _tell(progress_conn, _progress(chunk, written=len(chunk.records)))
    return True


def _progress(chunk: ChunkResult, written: int) -> Progress:
    return Progress(chunk.chunk_id, written, chunk.failures, chunk.warnings, chunk.bytes_read, chunk.stage_seconds,
                    sum(len(r.value) for r in chunk.records), chunk.throttled_seconds, chunk.max_rss_kb,
                    chunk.cpu_seconds, chunk.colour_conversions if written else {})  # images written, not tried
