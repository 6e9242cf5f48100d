"""Writer: the one process that owns an LMDB environment; puts records in order, in batched transactions."""

from __future__ import annotations

import errno
import json
import os
import pickle
import queue
import shutil
import signal
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Listener, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Any, NamedTuple

import lmdb
import numpy as np
from PIL import Image

from etl.checkpoint import Checkpoint, SplitState, skips_before, truncate_lines
from etl.datum import encode_blobproto
from etl.meansum import SumLayout
from etl.records import ChunkResult, Failure, Progress, ResultsLink
from etl.settings import UsageError
from etl.throttle import SharedState, TokenBucket, drop_written_pages
from etl.workers import STOP_SIGNALS, peak_rss_kb, widen

INITIAL_MAP_SIZE = 1 << 30  # grows by doubling; the file is sparse, so this is not disk used
APPEND_LIMIT = 10**8  # '%08d' keys stay in byte order below this; append mode needs that
END = b""  # the coordinator's "no more chunks" on the data pipe
DISK_FULL_BYTES = 1 << 20  # numpy and others report a short write without ENOSPC: check what is left


@dataclass(frozen=True)
class WriterSpec:
    """Where one split's database and list file go, and how often to commit."""

    split: str
    out_dir: str
    source_root: str
    relative_paths: bool
    commit_every: int
    resume: bool
    mean: SumLayout | None  # the train writer also writes mean.binaryproto and mean.jpg
    keep_page_cache: bool = False
    stop_at_failure: bool = False  # --on-error fail: a chunk with a bad file is not written, nor any after it

    @property
    def db_path(self) -> Path:
        return Path(self.out_dir, f"{self.split}_db")

    @property
    def list_path(self) -> Path:
        return Path(self.out_dir, f"{self.split}.txt")


class Ready(NamedTuple):
    """The writer's first word: the chunk to start from and what earlier runs already did."""

    start_chunk: int
    state: SplitState
    skipped: list[Failure]
    warned: list[Failure]


class WriterError(NamedTuple):
    """The writer cannot go on (disk full, I/O error); the database holds the last commit."""

    message: str


@dataclass
class WriterSummary:
    """The writer's last word: what it wrote and what writing cost."""

    written: int = 0
    commits: int = 0
    map_size: int = 0
    data_bytes: int = 0
    cpu_seconds: float = 0.0
    put_seconds: float = 0.0
    commit_seconds: float = 0.0
    throttled_seconds: float = 0.0
    max_rss_kb: int = 0
    ended_by: str = ""
    per_label: dict[str, int] = field(default_factory=dict)


class LmdbWriter:
    """Keys '%08d_%d' % (write_index, label), values as given; commits follow the checkpoint protocol."""

    def __init__(self, spec: WriterSpec, budget: TokenBucket | None = None) -> None:
        self.spec = spec
        self.budget = budget
        self.checkpoint = Checkpoint(spec.out_dir)
        spec.db_path.mkdir(parents=True, exist_ok=True)
        # LMDB's defaults: sync and metasync on, writemap off. Every commit is durable before the
        # checkpoint names it, so not even a power loss can leave the two disagreeing.
        self.env = lmdb.open(str(spec.db_path), map_size=INITIAL_MAP_SIZE, max_dbs=0, readahead=False)
        self.batch: list[tuple[bytes, bytes]] = []
        self.lines: list[str] = []
        self.skip_lines: list[str] = []
        self.summary = WriterSummary()
        self.state = SplitState()
        self.mean_sum: np.ndarray | None = None
        self.label_counts: Counter[int] = Counter()
        self.ended_by: list[str] = []  # why the input ended, for the coordinator's diagnostics
        self.dropped_upto = 0  # data.mdb bytes already advised out of the page cache

    def open(self) -> Ready:
        """Start fresh, or pick up exactly where the last commit of an earlier run left off."""
        skips: list[dict[str, Any]] = []
        skip_path = self.checkpoint.path(f"{self.spec.split}.skipped.jsonl")
        if self.spec.resume:
            self.state = self.checkpoint.state_for(self.spec.split, self.env.stat()["entries"])
            truncate_lines(self.spec.list_path, self.state.records)
            skips = skips_before(skip_path, self.state.chunks)
            if self.spec.mean is not None:
                self.mean_sum = self.checkpoint.load_sum(self.spec.split, self.state.chunks, self.spec.mean.size)
                if self.mean_sum is not None and self.mean_sum.ndim == 3:  # written before planes were summed
                    self.mean_sum = self.spec.mean.from_pixel_sum(self.mean_sum)
        else:
            self.spec.list_path.write_text("")
            skip_path.write_text("")
        self.summary.written = self.state.records
        self.label_counts.update({int(k): n for k, n in self.state.per_label.items()})
        self.list_file = open(self.spec.list_path, "a", encoding="utf-8", errors="surrogateescape")
        self.skip_file = open(skip_path, "a", encoding="utf-8", errors="surrogateescape")
        return Ready(self.state.chunks, self.state,
                     [Failure(e["path"], e["reason"]) for e in skips if e["kind"] == "skipped"],
                     [Failure(e["path"], e["reason"]) for e in skips if e["kind"] == "warning"])

    def add(self, result: ChunkResult) -> None:
        t0 = time.perf_counter()
        index, prefix = self.summary.written, self.list_prefix
        for rec in result.records:
            self.batch.append((b"%08d_%d" % (index, rec.label), rec.value))
            self.lines.append(f"{prefix}{rec.path} {rec.label}\n")
            self.summary.data_bytes += len(rec.value)
            self.label_counts[rec.label] += 1
            index += 1
        self.summary.written = index
        for kind, entries in (("skipped", result.failures), ("warning", result.warnings)):
            self.skip_lines.extend(json.dumps({"chunk": result.chunk_id, "kind": kind, "path": f.path,
                                               "reason": f.reason}) + "\n" for f in entries)
        if result.pixel_sum is not None and self.spec.mean is not None:
            if self.mean_sum is None:
                self.mean_sum = self.spec.mean.zeros(np.int64)
            self.mean_sum[result.sum_offset:] += result.pixel_sum
        self.state.chunks = result.chunk_id + 1
        self.state.bytes_read += result.bytes_read
        for stage, seconds in result.stage_seconds.items():
            self.state.stage_seconds[stage] += seconds
        self.summary.put_seconds += time.perf_counter() - t0

    @property
    def list_prefix(self) -> str:
        """What goes before each relative path in the list file: nothing, or the absolute source root."""
        return "" if self.spec.relative_paths else os.path.join(os.path.abspath(self.spec.source_root), "")

    def per_label(self) -> dict[str, int]:
        return {str(label): n for label, n in sorted(self.label_counts.items())}

    def commit(self, complete: bool = False) -> None:
        """Side files first, then pending state, LMDB commit, then the state: see etl.checkpoint."""
        if not self.batch and not self.skip_lines and not complete:
            return
        t0 = time.perf_counter()
        split, cp = self.spec.split, self.checkpoint
        for fh, lines in ((self.list_file, self.lines), (self.skip_file, self.skip_lines)):
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
            lines.clear()
        if self.mean_sum is not None and self.spec.mean is not None:
            cp.save_sum(split, self.state.chunks, self.spec.mean.trim(self.mean_sum)[0])
        self.state.records = self.summary.written
        self.state.per_label = self.summary.per_label = self.per_label()
        self.state.complete = complete
        cp.save_pending(split, self.state)
        self._put_batch()
        cp.promote_pending(split)
        if not self.spec.keep_page_cache:
            self.dropped_upto = drop_written_pages(str(self.spec.db_path / "data.mdb"), self.dropped_upto)
        cp.drop_sums_except(split, {self.state.chunks})
        self.summary.commits += 1
        self.summary.commit_seconds += time.perf_counter() - t0

    def _put_batch(self) -> None:
        if self.budget is not None:
            self.summary.throttled_seconds += self.budget.take(sum(len(v) for _, v in self.batch))
        append = self.summary.written < APPEND_LIMIT
        while self.batch:
            try:
                with self.env.begin(write=True) as txn:
                    txn.cursor().putmulti(self.batch, dupdata=False, overwrite=True, append=append)
                self.batch.clear()
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def close(self, complete: bool) -> WriterSummary:
        self.commit(complete=complete)
        self.env.sync(True)
        self.summary.map_size = self.env.info()["map_size"]
        self.env.close()
        self.list_file.close()
        self.skip_file.close()
        if complete and self.spec.mean is not None and self.mean_sum is not None and self.summary.written:
            write_mean(self.spec.out_dir, self.spec.mean.mean_image(self.mean_sum, self.summary.written))
        return self.summary


def write_mean(out_dir: str, mean: np.ndarray) -> None:
    """mean.binaryproto (CHW, BGR, float) and mean.jpg (RGB), as DIGITS writes them."""
    # DIGITS rounds the mean to whole pixel values before storing it as floats: do the same.
    image = np.clip(np.rint(mean), 0, 255).astype(np.uint8)
    channels = image.shape[2]
    planes = image[:, :, ::-1] if channels == 3 else image
    Path(out_dir, "mean.binaryproto").write_bytes(encode_blobproto(planes.transpose(2, 0, 1).astype(np.float32)))
    Image.fromarray(image if channels == 3 else image[:, :, 0]).save(Path(out_dir, "mean.jpg"), quality=90)


def _receive(data_conn: Any, inbox: queue.Queue, parent: int, why: list[str]) -> None:
    """Drain the data pipe into memory so the coordinator never waits on a commit's fsync."""
    try:
        while True:
            if not data_conn.poll(1.0):
                if os.getppid() != parent:
                    why.append("its parent changed")
                    break  # the coordinator was killed: commit what is in order, then stop
                continue
            if (data := data_conn.recv_bytes()) == END:
                why.append("end of input")
                break
            inbox.put(data)
    except (EOFError, OSError) as exc:
        why.append(f"{type(exc).__name__} {exc}")  # the coordinator is gone: treat as the end
    inbox.put(None)


def writer_main(spec: WriterSpec, data_conn: Any, progress_conn: Any, write_budget: SharedState | None = None,
                link: ResultsLink | None = None) -> None:
    """The writer's life: open the door for workers' results, announce where to start, write chunks in
    order, then its summary. Chunks come from the workers (link) or on the data pipe; the closing word
    always comes on the data pipe, from the coordinator."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the parent around the fork
    cpu0 = time.process_time()  # a forkserver child has imported its target's module by now: not the writer's work
    try:
        writer = LmdbWriter(spec, TokenBucket(write_budget) if write_budget is not None else None)
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
        _tell(progress_conn, WriterError(_describe(exc, spec.out_dir)))
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


HANDSHAKE_SECONDS = 5.0  # a connection that has not proven its key by then is dropped
MAX_HANDSHAKES = 64  # handshakes in progress at once; more connections are dropped at the door


def _accept_workers(listener: Listener, authkey: bytes, inbox: queue.Queue) -> None:
    """Each worker connects once; a thread per connection checks its key, then reads its chunks into
    the inbox. The key is checked there, not here, with a time limit and a bound on how many at
    once, so that a peer that dies, stalls or crowds the door costs its own connection only."""
    handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
    while True:
        conn, admitted = None, False
        try:
            conn = listener.accept()  # the listener has no authkey: accept() does no handshake
            admitted = handshakes.acquire(blocking=False)
            if not admitted:
                conn.close()  # a worker turned away retries as its replacement
                continue
            threading.Thread(target=_receive_chunks, args=(conn, authkey, handshakes, inbox), daemon=True).start()
        except Exception:  # out of descriptors or threads for a moment: drop this one, keep the door open
            if admitted:
                handshakes.release()
            if conn is not None:
                conn.close()
            time.sleep(0.1)


def _receive_chunks(conn: Any, authkey: bytes, handshakes: threading.BoundedSemaphore, inbox: queue.Queue) -> None:
    try:
        try:
            _receive_timeout(conn, HANDSHAKE_SECONDS)
            deliver_challenge(conn, authkey)  # what Listener.accept() would do with an authkey
            answer_challenge(conn, authkey)
            _receive_timeout(conn, 0.0)
        finally:
            handshakes.release()
        widen(conn)
        while True:
            inbox.put(conn.recv_bytes())
    except Exception:  # a stranger, a timeout, or a worker gone: this connection ends, nothing else
        # A chunk half sent by a dying worker is lost here; the coordinator, which never got its
        # number back, runs it again.
        conn.close()


def _receive_timeout(conn: Any, seconds: float) -> None:
    """SO_RCVTIMEO on the connection's socket (0: none); a read past it fails instead of waiting."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        whole = int(seconds)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


def _write_in_order(writer: LmdbWriter, next_chunk: int, data_conn: Any, progress_conn: Any,
                    listener: Listener | None = None, authkey: bytes = b"") -> bool:
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_receive, args=(data_conn, inbox, os.getppid(), writer.ended_by), daemon=True).start()
    if listener is not None:
        threading.Thread(target=_accept_workers, args=(listener, authkey, inbox), daemon=True).start()
    pending: dict[int, ChunkResult] = {}  # the reorder buffer; the coordinator bounds its size
    while (data := inbox.get()) is not None:
        result: ChunkResult | str = pickle.loads(data)
        if isinstance(result, str):  # "done": every chunk was sent
            writer.ended_by.append(f"{result!r} with {len(pending)} chunks pending")
            return not pending
        if result.chunk_id < next_chunk or result.chunk_id in pending:
            continue  # delivered twice: its worker died after sending it, and it was run again
        pending[result.chunk_id] = result
        while next_chunk in pending:
            ready = pending.pop(next_chunk)
            if writer.spec.stop_at_failure and ready.failures:
                # Not committed, so a resume converts this chunk again: a file fixed meanwhile goes in.
                writer.ended_by.append(f"a bad file in chunk {ready.chunk_id} (--on-error fail)")
                _tell(progress_conn, _progress(ready, written=0))
                return False
            writer.add(ready)
            if len(writer.batch) >= writer.spec.commit_every:
                writer.commit()
            _tell(progress_conn, _progress(ready, written=len(ready.records)))
            next_chunk += 1
    return False  # stopped early (interrupt, error): commit what is complete, mark it incomplete


def _progress(chunk: ChunkResult, written: int) -> Progress:
    return Progress(chunk.chunk_id, written, chunk.failures, chunk.warnings, chunk.bytes_read, chunk.stage_seconds,
                    sum(len(r.value) for r in chunk.records), chunk.throttled_seconds, chunk.max_rss_kb,
                    chunk.cpu_seconds)


def _describe(exc: BaseException, out_dir: str) -> str:
    text = str(exc)
    full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in text
    if full or shutil.disk_usage(out_dir).free < DISK_FULL_BYTES:
        return f"the disk is full ({text}); free space, then run the same command with --resume"
    return (f"writing the database failed ({type(exc).__name__}: {text}); it holds its last commit: "
            "fix the cause, then run the same command with --resume")
