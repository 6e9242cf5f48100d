"""Workers: the process pool that reads, decodes, resizes and encodes images, chunk by chunk."""

from __future__ import annotations

import ctypes
import fcntl
import os
import pickle
import queue
import resource
import signal
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, NamedTuple

import cv2
import numpy as np

from etl.codec import BadImage, Codec, Decoded
from etl.datum import encode_datum
from etl.meansum import SumLayout
from etl.records import ChunkResult, Failure, Item, Record, ResultsLink, Task
from etl.settings import Settings
from etl.throttle import Budgets, ReadGate
from etl.transform import Geometry, apply_geometry, dct_scale, fit_planes, noise_rng, plan_geometry

SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True)
class WorkSpec:
    """What every worker of one split needs: where files are and how to convert them."""

    root: str
    split_code: int
    width: int
    height: int
    resize_mode: str
    channels: int
    encoding: str
    quality: int
    seed: int
    max_pixels: int
    sum_pixels: bool  # the train split feeds the mean image
    strict: bool = False  # refuse images that decode only with a warning
    keep_page_cache: bool = False

    @property
    def planar(self) -> bool:
        """Whether JPEGs can go through as YCbCr planes: colour JPEG output, and a mode that never pads."""
        return self.encoding == "jpg" and self.channels == 3 and self.resize_mode in ("squash", "crop")

    @classmethod
    def for_split(cls, s: Settings, name: str, root: str, keep_page_cache: bool) -> WorkSpec:
        return cls(root, SPLIT_CODES[name], s.width, s.height, s.resize_mode, s.channels,
                   s.encoding, s.quality, s.seed, s.max_pixels, sum_pixels=(name == "train"), strict=s.strict,
                   keep_page_cache=keep_page_cache)


def read_file(path: str, gate: ReadGate) -> bytes:
    """The file's bytes, within the read budget; the reasons it cannot be read become BadImage messages."""
    try:
        return gate.read_file(path)
    except FileNotFoundError:
        reason = "dangling symlink" if os.path.islink(path) else "file vanished since the scan"
        raise BadImage(f"cannot read: {reason}") from None
    except PermissionError:
        raise BadImage("cannot read: permission denied") from None
    except IsADirectoryError:
        raise BadImage("cannot read: is a directory") from None
    except OSError as exc:
        raise BadImage(f"cannot read: {exc.strerror or exc}") from None


class ImageConverter:
    """Turns items into Datum records; one per worker process."""

    def __init__(self, spec: WorkSpec, fault: Callable[[str], None] | None = None, slot: Slot | None = None,
                 gate: ReadGate | None = None) -> None:
        self.spec = spec
        self.codec = Codec(spec.channels, spec.max_pixels)
        self.fault = fault
        self.slot = slot
        self.gate = gate or ReadGate(None, drop_cache=False)
        self.sums = SumLayout(spec.width, spec.height, spec.channels)

    def run_chunk(self, task: Task) -> ChunkResult:
        spec = self.spec
        result = ChunkResult(task.chunk_id)
        waited_before, cpu_before = self.gate.waited, time.process_time()
        if spec.sum_pixels:
            result.pixel_sum = self.sums.zeros(self.sums.chunk_dtype(len(task.items)))
        for item in task.items:
            if item.index in task.give_up:
                result.failures.append(Failure(item.path, task.give_up[item.index]))
                continue
            self._hold(item.index)
            try:
                self._convert(item, result)
            except BadImage as exc:
                result.failures.append(Failure(item.path, str(exc)))
            except Exception as exc:  # a defect or an exotic file must cost this image only
                result.failures.append(Failure(item.path, f"unexpected error: {type(exc).__name__}: {exc}"))
        self._hold(-1)
        if result.pixel_sum is not None:
            result.pixel_sum, result.sum_offset = self.sums.trim(result.pixel_sum)
        result.throttled_seconds = self.gate.waited - waited_before
        result.max_rss_kb = peak_rss_kb()
        result.cpu_seconds = time.process_time() - cpu_before
        return result

    def _hold(self, index: int) -> None:
        if self.slot is not None:
            self.slot.since.value = time.monotonic()
            self.slot.item.value = index

    def _convert(self, item: Item, result: ChunkResult) -> None:
        t0 = time.thread_time()
        path = os.path.join(self.spec.root, item.path)
        if self.fault is not None:
            self.fault(path)
        data = read_file(path, self.gate)
        self._hold(item.index)  # the time limit is for work: a throttled read is not a hang
        result.bytes_read += len(data)
        result.stage_seconds["read"] += time.thread_time() - t0
        value, warning = self.convert_bytes(data, item, result.stage_seconds, result.pixel_sum)
        result.records.append(Record(item.index, item.label, item.path, value))
        if warning:
            result.warnings.append(Failure(item.path, warning))

    def convert_bytes(self, data: bytes, item: Item, times: dict[str, float],
                      pixel_sum: np.ndarray | None = None) -> tuple[bytes, str | None]:
        """File bytes -> (serialized Datum, decoder warning); adds each stage's CPU time, and the image to
        pixel_sum; BadImage for a warning under --strict.

        CPU time, not wall time: a throttled or slow read, or a worker waiting for a core, is not a
        stage's cost (throttling is reported on its own)."""
        spec, clock = self.spec, time.thread_time
        t1 = clock()
        planes = self.codec.decode_planes(data, self._scale_chooser) if spec.planar else None
        decoded = self.codec.decode(data, self._scale_chooser) if planes is None else None
        t2 = clock()
        src = planes or decoded
        assert src is not None
        geo = plan_geometry(src.src_w, src.src_h, spec.width, spec.height, spec.resize_mode)
        if planes is not None:
            out = fit_planes(planes, geo, spec.width, spec.height)
            t3 = clock()
            payload = self.codec.encode_planes(*out, spec.quality)
        else:
            out = (self._fit(decoded, geo, item),)
            t3 = clock()
            payload = self.codec.encode(out[0], spec.encoding, spec.quality)
        t4 = clock()
        value = encode_datum(spec.channels, spec.height, spec.width, payload, item.label, spec.encoding != "none")
        t5 = clock()
        times["decode"] += t2 - t1
        times["resize"] += t3 - t2
        times["encode"] += t4 - t3
        times["datum"] += t5 - t4
        warning = None if decoded is None else decoded.warning
        if warning and spec.strict:  # before the sum: a refused image must not count in the mean
            raise BadImage(f"decoded only with a warning (--strict): {warning}")
        if pixel_sum is not None:
            (self.sums.add_planes if planes is not None else self.sums.add_pixels)(pixel_sum, *out)
        return value, warning

    def _fit(self, decoded: Decoded | None, geo: Geometry, item: Item) -> np.ndarray:
        assert decoded is not None
        spec = self.spec
        rng = noise_rng(spec.seed, spec.split_code, item.index) if spec.resize_mode in ("fill", "half_crop") else None
        return apply_geometry(decoded.pixels, geo, spec.width, spec.height, rng)

    def _scale_chooser(self, src_w: int, src_h: int) -> int:
        s = self.spec
        return dct_scale(src_w, src_h, plan_geometry(src_w, src_h, s.width, s.height, s.resize_mode))


def peak_rss_kb() -> int:
    """This process's peak resident set size in KiB.

    /proc's VmHWM, where there is one: ru_maxrss survives exec(), so a process started from a big
    parent would report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: have the kernel kill this worker if its parent (the forkserver) dies. The coordinator's
    death is noticed by the task-reading thread, which sees its pipe close."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the between-tasks parent check still applies


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM back for a moment: while a process is being forked (so the child can
    install its own handlers first), or while a message is half-way into a pipe."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class FaultHook:
    """Test-only fault injection: ETL_TEST_FAULTS="crash=a.jpg,hang=b.jpg,exit=c.jpg,crash_once=d.jpg".

    crash sends the worker SIGSEGV, exit calls os._exit(3), hang sleeps for an hour, vanish deletes
    the file just before it is read; the name <startup> fires as a worker starts; *_once
    variants fire only the first time (a marker file in ETL_TEST_FAULT_DIR remembers).
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.rules = dict(rule.split("=", 1)[::-1] for rule in env.get("ETL_TEST_FAULTS", "").split(",") if "=" in rule)
        self.marker_dir = env.get("ETL_TEST_FAULT_DIR", "")

    def __call__(self, path: str) -> None:
        action = self.rules.get(os.path.basename(path))
        if action is None:
            return
        if action.endswith("_once"):
            marker = os.path.join(self.marker_dir, os.path.basename(path) + ".fired")
            if os.path.exists(marker):
                return
            open(marker, "w").close()
            action = action[: -len("_once")]
        if action == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif action == "exit":
            os._exit(3)
        elif action == "hang":
            time.sleep(3600)
        elif action == "vanish":
            os.unlink(path)


class Slot(NamedTuple):
    """Shared memory one worker writes and the coordinator reads: the image in hand, since when."""

    item: Any  # multiprocessing.Value('q'): the item index, -1 between images
    since: Any  # multiprocessing.Value('d'): time.monotonic() when it began


def _take_tasks(conn: Connection, inbox: queue.Queue) -> None:
    """Read tasks as soon as they come, so the coordinator never blocks on a big task while this
    worker is itself blocked sending a result back on the same pipe."""
    try:
        while (task := conn.recv()) is not None:
            inbox.put(task)
    except (EOFError, OSError):
        # The coordinator is gone (killed): nobody will read a result. Leave now, even if the
        # main thread is stuck inside a decoder.
        os._exit(0)
    inbox.put(None)


CONNECT_SECONDS = 60.0
NO_WRITER_EXIT = 75  # a worker's exit code when it cannot reach the writer (EX_TEMPFAIL)
STARTUP_FAULT = "<startup>"  # ETL_TEST_FAULTS="exit=<startup>": the fault hook's name for worker start-up


def _connect(link: ResultsLink) -> Connection | None:
    """The worker's socket to the writer. A handshake that never ends would leave this worker
    holding tasks with no image in hand, where the hang check cannot see it: die instead, and be
    replaced like any worker that dies."""
    watchdog = threading.Timer(CONNECT_SECONDS, os._exit, args=(NO_WRITER_EXIT,))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn = Client(link.address, family="AF_UNIX", authkey=link.authkey)
    except Exception:  # refused, reset, wrong key: no writer to work for
        return None
    finally:
        watchdog.cancel()
    widen(conn)
    return conn


def worker_main(spec: WorkSpec, conn: Connection, slot: Slot, budgets: Budgets | None, link: ResultsLink) -> None:
    """A worker's life: take chunks from its pipe until None; send each result to the writer, pickled,
    then the chunk's number back to the coordinator (which thus never copies the records)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the coordinator's handler, inherited by fork
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the parent around the fork
    die_with_parent()
    cv2.setNumThreads(1)  # one image per core: OpenCV's own threads would only contend
    gate = ReadGate(budgets, drop_cache=not spec.keep_page_cache)
    fault = FaultHook(dict(os.environ))
    fault(STARTUP_FAULT)  # test-only: a worker that dies before doing anything
    converter = ImageConverter(spec, fault, slot, gate)
    to_writer = _connect(link)
    if to_writer is None:
        os._exit(NO_WRITER_EXIT)  # the coordinator says why, and does not blame the chunk it holds
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_take_tasks, args=(conn, inbox), daemon=True).start()
    parent = os.getppid()
    while True:
        try:
            task = inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return  # the coordinator died: do not linger as an orphan
            continue
        if task is None:
            return
        result = pickle.dumps(converter.run_chunk(task), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            to_writer.send_bytes(result)
        except OSError:
            return  # the writer is gone (see above)
        conn.send(task.chunk_id)


PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size: a whole chunk's results in one or two system calls


def widen(*conns: Connection) -> None:
    """Give the pipes (or sockets) that carry chunk results room for a whole chunk: 64 KB pipes split a
    1 MB chunk into 16 reads and writes, each waking the other side. Best effort: limits may refuse."""
    for conn in conns:
        fd = conn.fileno()
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            else:
                sock = socket.socket(fileno=os.dup(fd))
                with sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIPE_BYTES)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PIPE_BYTES)
        except OSError:
            pass


class WorkerHandle:
    """One worker process, its pipe, its slot, and the tasks it holds in the order it got them."""

    def __init__(self, ctx: BaseContext, number: int, spec: WorkSpec, budgets: Budgets | None,
                 link: ResultsLink) -> None:
        self.conn, child_conn = ctx.Pipe()  # tasks out, chunk numbers back: small messages only
        self.slot = Slot(ctx.Value("q", -1, lock=False), ctx.Value("d", 0.0, lock=False))
        self.proc: BaseProcess = ctx.Process(target=worker_main, args=(spec, child_conn, self.slot, budgets, link),
                                             name=f"etl-worker-{number}", daemon=True)
        with stop_signals_blocked():
            self.proc.start()
        child_conn.close()
        self.tasks: deque[Task] = deque()
        self.released = False

    def give(self, task: Task) -> None:
        self.tasks.append(task)
        try:
            with stop_signals_blocked():
                self.conn.send(task)
        except OSError:
            pass  # it died a moment ago: its sentinel will say so, and the task goes back in the queue

    def image_in_hand(self) -> tuple[int, float]:
        """(item index, seconds on it) or (-1, 0) between images."""
        item = self.slot.item.value
        return (item, time.monotonic() - self.slot.since.value) if item >= 0 else (-1, 0.0)

    def kill(self) -> None:
        """Stop the process and release its pipe and handle now (see SplitRun._release_writer)."""
        if self.released:
            return
        self.released = True
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(2.0)
        self.conn.close()
        try:
            self.proc.close()
        except ValueError:
            pass  # not reaped within 2 s: leave it to the OS


class WorkerPool:
    """Starts, replaces and stops the worker processes of one split; each holds at most per_worker tasks."""

    def __init__(self, ctx: BaseContext, count: int, spec: WorkSpec, link: ResultsLink,
                 budgets: Budgets | None = None, per_worker: int = 2) -> None:
        self.ctx, self.spec, self.per_worker, self.budgets, self.link = ctx, spec, per_worker, budgets, link
        self.started = 0
        self.handles: list[WorkerHandle] = [self._start() for _ in range(count)]

    def _start(self) -> WorkerHandle:
        self.started += 1
        return WorkerHandle(self.ctx, self.started, self.spec, self.budgets, self.link)

    def free(self) -> WorkerHandle | None:
        """The least loaded worker with room for a task, if any."""
        best = min(self.handles, key=lambda h: len(h.tasks))
        return best if len(best.tasks) < self.per_worker else None

    def replace(self, dead: WorkerHandle) -> list[Task]:
        """Swap a dead (or killed) worker for a fresh one; returns the tasks it held."""
        dead.kill()
        self.handles[self.handles.index(dead)] = self._start()
        return list(dead.tasks)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask each worker to finish (None), then make sure none is left behind."""
        for h in self.handles:
            try:
                h.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for h in self.handles:
            h.proc.join(max(0.1, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        for h in self.handles:
            h.kill()
