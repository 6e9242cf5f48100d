"""Workers: the process pool that converts chunks of images; each worker sends its results to the writer."""

from __future__ import annotations

import os
import pickle
import queue
import threading
import time
from collections import deque
from multiprocessing.connection import Client, Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, NamedTuple

import cv2

from etl.converter import ImageConverter, WorkSpec
from etl.messages import Delivered, Done, ResultsLink, Task
from etl.procs import (
    NO_WRITER_EXIT,
    child_signals,
    die_with_parent,
    release,
    start_child,
    stop_signals_blocked,
    widen,
)
from etl.testing import STARTUP_FAULT, FaultHook
from etl.throttle import Budgets, ReadGate

CONNECT_SECONDS = 60.0


class Slot(NamedTuple):
    """Shared memory one worker writes and the coordinator reads: the image in hand, since when."""

    item: Any  # multiprocessing.Value('q'): the item index, -1 between images
    since: Any  # multiprocessing.Value('d'): time.monotonic() when it began

    def hold(self, index: int) -> None:
        self.since.value = time.monotonic()
        self.item.value = index


def _take_tasks(conn: Connection, inbox: queue.Queue) -> None:
    """Read tasks as soon as they come, so the coordinator never blocks on a big task while this
    worker is itself blocked sending a result back on the same pipe."""
    try:
        while not isinstance(task := conn.recv(), Done):
            inbox.put(task)
    except (EOFError, OSError):
        # The coordinator is gone (killed): nobody will read a result. Leave now, even if the
        # main thread is stuck inside a decoder.
        os._exit(0)
    inbox.put(None)


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


def _start_worker(spec: WorkSpec, slot: Slot, budgets: Budgets | None, link: ResultsLink) -> tuple[Any, Connection]:
    child_signals(ignore_sigterm=False)  # not the coordinator's SIGTERM handler, inherited by fork
    die_with_parent()
    cv2.setNumThreads(1)  # one image per core: OpenCV's own threads would only contend
    assert spec.reader is not None
    gate = ReadGate(spec.reader, budgets, drop_cache=not spec.keep_page_cache)
    fault = FaultHook(dict(os.environ))
    fault(STARTUP_FAULT)  # test-only: a worker that dies before doing anything
    converter = ImageConverter(spec, gate, slot.hold, fault)
    to_writer = _connect(link)
    if to_writer is None:
        os._exit(NO_WRITER_EXIT)  # the coordinator says why, and does not blame the chunk it holds
    return converter, to_writer


def worker_main(spec: WorkSpec, conn: Connection, slot: Slot, budgets: Budgets | None, link: ResultsLink) -> None:
    """A worker's life: take chunks from its pipe until Done; send each result to the writer, pickled,
    then Delivered back to the coordinator (which thus never copies the records)."""
    converter, to_writer = _start_worker(spec, slot, budgets, link)
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
        conn.send(Delivered(task.chunk_id))


class WorkerHandle:
    """One worker process, its pipe, its slot, and the tasks it holds in the order it got them."""

    def __init__(self, ctx: BaseContext, number: int, spec: WorkSpec, budgets: Budgets | None,
                 link: ResultsLink) -> None:
        self.conn, child_conn = ctx.Pipe()  # Tasks out, Delivered back: small messages only
        self.slot = Slot(ctx.Value("q", -1, lock=False), ctx.Value("d", 0.0, lock=False))
        self.proc: BaseProcess = ctx.Process(target=worker_main, args=(spec, child_conn, self.slot, budgets, link),
                                             name=f"etl-worker-{number}", daemon=True)
        start_child(self.proc)
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
        """Stop the process and release its pipe and handle now (see etl.procs.release)."""
        if not self.released:
            self.released = True
            release(self.proc, self.conn, grace=2.0)


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
        """Ask each worker to finish (Done), then make sure none is left behind."""
        for h in self.handles:
            try:
                h.conn.send(Done(complete=True))
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for h in self.handles:
            h.proc.join(max(0.1, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        for h in self.handles:
            h.kill()
