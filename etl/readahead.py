"""Read-ahead: a worker's next images read by one thread while the current image decodes, in order, bounded."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from etl.messages import Item

Read = tuple[bytes, float]  # an item's bytes, and the CPU seconds its read cost in another thread


ReadFn = Callable[[Item], bytes]  # an item's bytes (a ReadGate's read), Unreadable with the reason


def timed_read(read: ReadFn, item: Item) -> Read:
    t0 = time.thread_time()
    data = read(item)
    return data, time.thread_time() - t0


# Reads in flight at once per worker: each waits out its storage's latency in its own thread, so that
# latency is hidden while it is below about this many images' conversion time (8 x ~3.5 ms here); one
# thread alone hid none of a 5 ms latency's cost past 1/latency reads a second (docs/benchmarks.md).
MAX_READ_THREADS = 8


class ReadAhead:
    """Reads the items a worker announces (plan) with `read` (through its gate), at most `depth` ahead of
    the one it asks for (take). From a cold disk or a network filesystem each read is a wait; threads (up to
    MAX_READ_THREADS, one per image ahead) wait for them while the decoder works (reads release the GIL).
    The gate charges the throttle's budgets when a read is made, ahead or not, and drops the pages once
    read; a read that fails raises its Unreadable at take(), as a read in place would. Images come back in
    the order announced. depth 0: every read in place, when asked for. At most `depth` images are held."""

    def __init__(self, read: ReadFn, depth: int) -> None:
        self.read, self.depth = read, depth
        threads = min(depth, MAX_READ_THREADS)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="etl-read") if depth > 0 else None
        self.waiting: deque[Item] = deque()  # announced, not yet started
        self.started: deque[tuple[int, Future[Read]]] = deque()  # (item index, its read), in order

    def plan(self, items: Iterable[Item]) -> None:
        """The items the worker will take next, in the order it will take them."""
        if self.pool is not None:
            self.waiting.extend(items)
            self._start()

    def _start(self) -> None:
        assert self.pool is not None
        while self.waiting and len(self.started) < self.depth:
            item = self.waiting.popleft()
            self.started.append((item.index, self.pool.submit(timed_read, self.read, item)))

    def take(self, item: Item) -> Read:
        """The item's bytes and the read's CPU seconds; items announced before it and never taken (their
        conversion stopped before the read) are dropped."""
        if self.pool is None:
            return self.read(item), 0.0
        while self.started and self.started[0][0] != item.index:
            self.started.popleft()[1].cancel()
            self._start()
        while not self.started and self.waiting:
            if self.waiting[0].index == item.index:
                self._start()
            else:
                self.waiting.popleft()
        if not self.started:
            return self.read(item), 0.0  # never announced
        _, read = self.started.popleft()
        self._start()
        return read.result()

    def clear(self) -> None:
        """Forget what was announced and not taken (the end of a chunk): no read of it is left running."""
        self.waiting.clear()
        while self.started:
            _, read = self.started.popleft()
            if not read.cancel():
                read.exception()  # wait for it: no read of this chunk may outlive it

    def close(self) -> None:
        self.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
