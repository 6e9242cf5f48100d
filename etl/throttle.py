"""Throttle: disk I/O caps shared by every process (token buckets), the read gate, and adaptive back-off."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from etl.messages import Item
    from etl.sources.base import Reader

MB = 1_000_000
BURST_SECONDS = 0.5  # tokens a bucket may bank: smooth over seconds, small bursts only


class SharedState:
    """A bucket's numbers in shared memory, so that all processes draw on one budget."""

    def __init__(self, ctx: BaseContext, rate: float) -> None:
        self.lock = ctx.Lock()
        self.rate = ctx.Value("d", rate, lock=False)  # units per second; inf = no cap
        self.tokens = ctx.Value("d", 0.0, lock=False)
        self.stamp = ctx.Value("d", -1.0, lock=False)


class LocalState:
    """The same numbers in plain attributes, for one process and for tests with a fake clock."""

    class _Box:
        def __init__(self, value: float) -> None:
            self.value = value

    class _NoLock:
        def acquire(self, timeout: float = -1) -> bool:
            return True

        def release(self) -> None:
            return None

    def __init__(self, rate: float) -> None:
        self.lock = self._NoLock()
        self.rate, self.tokens, self.stamp = self._Box(rate), self._Box(0.0), self._Box(-1.0)


class TokenBucket:
    """Take n units; sleep (never spin) until the budget allows. Debt-based: a take larger than
    the burst is granted at once and the taker sleeps for its cost, so big files cannot starve."""

    def __init__(self, state: SharedState | LocalState, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.state, self.clock, self.sleep = state, clock, sleep
        self.waited = 0.0  # seconds this process's threads spent throttled, added up
        self._waited_lock = threading.Lock()  # a worker's read-ahead threads take from one bucket

    @property
    def rate(self) -> float:
        return self.state.rate.value

    def take(self, amount: float) -> float:
        """Reserve `amount`; returns the seconds slept."""
        if math.isinf(self.rate) or amount <= 0:
            return 0.0
        # A process killed inside the lock would leave it held for ever: never wait long for it.
        locked = self.state.lock.acquire(timeout=1.0)
        try:
            now, rate = self.clock(), self.state.rate.value
            if self.state.stamp.value < 0:  # the first take: start empty, so no opening burst
                self.state.stamp.value, self.state.tokens.value = now, 0.0
            refill = (now - self.state.stamp.value) * rate
            tokens = min(rate * BURST_SECONDS, self.state.tokens.value + refill) - amount
            self.state.tokens.value, self.state.stamp.value = tokens, now
        finally:
            if locked:
                self.state.lock.release()
        wait = -tokens / rate if tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)
            with self._waited_lock:
                self.waited += wait
        return wait


@dataclass(frozen=True)
class Caps:
    """One split's limits: MB/s read by the workers, MB/s written by the writer, files opened per second."""

    read_mbps: float | None = None
    write_mbps: float | None = None
    iops: float | None = None

    def as_json(self) -> dict[str, float | None]:
        return {"max_read_mbps": self.read_mbps, "max_write_mbps": self.write_mbps, "max_iops": self.iops}


class Budgets:
    """The three shared buckets of one split, created by the coordinator before it starts processes."""

    def __init__(self, ctx: BaseContext, caps: Caps) -> None:
        self.caps = caps
        self.read = SharedState(ctx, caps.read_mbps * MB if caps.read_mbps else math.inf)
        self.write = SharedState(ctx, caps.write_mbps * MB if caps.write_mbps else math.inf)
        self.opens = SharedState(ctx, caps.iops if caps.iops else math.inf)


class ReadGate:
    """What a worker reads through: a source's reader behind the IOPS and read-MB budgets, with its
    page-cache hygiene (drop_cache: read-once input leaves the cache)."""

    def __init__(self, reader: Reader, budgets: Budgets | None, drop_cache: bool) -> None:
        self.reader = reader
        self.read_budget = TokenBucket(budgets.read) if budgets else None
        self.opens = TokenBucket(budgets.opens) if budgets else None
        self.drop_cache = drop_cache and hasattr(os, "posix_fadvise")

    def read(self, item: Item) -> bytes:
        """The item's bytes, within the budgets; Unreadable (etl.sources) with the reason."""
        if self.opens is not None:
            self.opens.take(1)
        return self.reader.read(item, self._charge, self.drop_cache)

    def _charge(self, size: int) -> None:
        if self.read_budget is not None:
            self.read_budget.take(size)

    @property
    def waited(self) -> float:
        return sum(b.waited for b in (self.read_budget, self.opens) if b is not None)


def drop_written_pages(path: str, start: int) -> int:
    """After a synced commit its pages are on disk: let the kernel drop what was appended since `start`.

    Pages before it that LMDB rewrites (branch pages, the free list) are hot and stay cached.
    Returns the new end to start from next time.
    """
    if not hasattr(os, "posix_fadvise"):
        return start
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        if end > start:
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
        return end
    finally:
        os.close(fd)


def block_device(path: str) -> str | None:
    """The psutil disk name (e.g. 'nvme0n1', 'sda') of the device holding `path`, if it has one."""
    st = os.stat(path)
    link = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if not os.path.exists(link):
        return None  # tmpfs, overlay without a block device, network filesystems
    name = os.path.basename(os.path.realpath(link))
    return name if name in psutil.disk_io_counters(perdisk=True) else None


@dataclass
class AdaptiveIO:
    """Backs a bucket off while its device is busier than `target` percent, and lets it recover.

    Multiplicative decrease (x0.7) from the rate actually achieved, gentle increase (x1.15) when
    the device is below 0.8 x target, back to the user's cap (or none) once well clear.
    """

    state: SharedState
    device: str | None
    cap: float  # the user's cap in units/s, inf for none
    target: float = 80.0
    interval: float = 1.0
    samples: list[list[float]] = field(default_factory=list)
    _last: tuple[float, float, float] | None = None  # (time, busy_ms, units done)

    def observe(self, now: float, units_done: float) -> None:
        if self.device is None:
            return
        counters = psutil.disk_io_counters(perdisk=True).get(self.device)
        if counters is None or not hasattr(counters, "busy_time"):
            return
        if self._last is None:
            self._last = (now, counters.busy_time, units_done)
            return
        t0, busy0, done0 = self._last
        if now - t0 < self.interval:
            return
        util = min(100.0, 100.0 * (counters.busy_time - busy0) / 1000.0 / (now - t0))
        achieved = (units_done - done0) / (now - t0)
        self.state.rate.value = self._next_rate(util, achieved)
        self._last = (now, counters.busy_time, units_done)
        if len(self.samples) < 3600:
            self.samples.append([round(now, 1), round(util, 1), round(achieved / MB, 2),
                                 round(self.state.rate.value / MB, 2) if math.isfinite(self.state.rate.value)
                                 else -1])

    def _next_rate(self, util: float, achieved: float) -> float:
        rate = self.state.rate.value
        if util > self.target:
            return max(min(rate, achieved) * 0.7, 64 * 1024)
        if util < 0.8 * self.target and math.isfinite(rate):
            rate *= 1.15
            if rate >= self.cap or (math.isinf(self.cap) and rate > 4 * max(achieved, 1.0)):
                return self.cap
        return rate

    def as_json(self) -> dict[str, Any]:
        return {"device": self.device, "target_percent": self.target,
                "samples_t_util_mbps_cap": self.samples}
