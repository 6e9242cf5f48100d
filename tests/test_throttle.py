"""Disk I/O throttling: the shared token bucket (fake clock, many processes), caps end to end, adaptive back-off."""

import json
import math
import multiprocessing as mp
import os
import time

import pytest

from etl.messages import Item
from etl.settings import UsageError, build_settings, parse_cap
from etl.sources import FileReader
from etl.throttle import (
    MB,
    AdaptiveIO,
    LocalState,
    ReadGate,
    SharedState,
    TokenBucket,
    block_device,
)

from .conftest import run_cli


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def bucket(rate: float) -> tuple[TokenBucket, FakeClock]:
    clock = FakeClock()
    return TokenBucket(LocalState(rate), clock=clock, sleep=clock.sleep), clock


@pytest.mark.quick
def test_starts_empty_then_paces_at_the_rate():
    b, clock = bucket(100.0)
    for _ in range(10):
        b.take(10)
    assert clock.now - 100.0 == pytest.approx(1.0)  # 100 units at 100/s: one second, no opening burst
    assert b.waited == pytest.approx(1.0)


@pytest.mark.quick
def test_idle_time_banks_at_most_half_a_second_of_burst():
    b, clock = bucket(100.0)
    b.take(1)
    clock.now += 60  # a minute idle
    assert b.take(50) == 0  # the burst covers 0.5 s worth
    assert b.take(50) == pytest.approx(0.5)  # then the rate applies again


@pytest.mark.quick
def test_a_request_larger_than_the_burst_is_granted_and_paid_for():
    b, clock = bucket(100.0)
    assert b.take(1000) == pytest.approx(10.0)
    assert b.take(100) == pytest.approx(1.0)


@pytest.mark.quick
def test_no_cap_never_waits():
    b, clock = bucket(math.inf)
    assert b.take(10**12) == 0 and clock.slept == []


def _taker(state: SharedState, n: int, size: int) -> None:
    b = TokenBucket(state)
    for _ in range(n):
        b.take(size)


def test_one_budget_shared_by_many_processes():
    ctx = mp.get_context("fork")
    state = SharedState(ctx, 1_000_000.0)  # 1 MB/s for all of them together
    procs = [ctx.Process(target=_taker, args=(state, 10, 50_000)) for _ in range(3)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    elapsed = time.monotonic() - t0
    assert elapsed >= 1.5 * 0.9  # 1.5 MB at 1 MB/s, however many takers
    assert all(p.exitcode == 0 for p in procs)


@pytest.mark.quick
def test_adaptive_backs_off_when_busy_and_recovers_to_the_cap():
    state = LocalState(10 * MB)
    watcher = AdaptiveIO(state, "vda", cap=10 * MB, target=80)
    state.rate.value = watcher._next_rate(util=95, achieved=8 * MB)
    assert state.rate.value == pytest.approx(0.7 * 8 * MB)
    for _ in range(20):
        state.rate.value = watcher._next_rate(util=10, achieved=state.rate.value)
    assert state.rate.value == 10 * MB
    uncapped = AdaptiveIO(LocalState(math.inf), "vda", cap=math.inf)
    assert uncapped._next_rate(util=99, achieved=50 * MB) == pytest.approx(35 * MB)


@pytest.mark.quick
def test_adaptive_without_a_device_does_nothing():
    state = LocalState(5.0)
    watcher = AdaptiveIO(state, None, cap=5.0)
    watcher.observe(time.monotonic(), 123)
    assert state.rate.value == 5.0 and watcher.samples == []


@pytest.mark.quick
def test_block_device_lookup_does_not_fail(tmp_path):
    name = block_device(str(tmp_path))
    assert name is None or isinstance(name, str)


@pytest.mark.quick
def test_read_gate_drops_pages_after_reading(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, length, advice: calls.append(advice), raising=False)
    path = tmp_path / "f.jpg"
    path.write_bytes(b"x" * 1000)
    assert ReadGate(FileReader(str(tmp_path)), None, drop_cache=True).read(Item(0, "f.jpg", 0)) == b"x" * 1000
    assert calls == [os.POSIX_FADV_DONTNEED]
    ReadGate(FileReader(str(tmp_path)), None, drop_cache=False).read(Item(0, "f.jpg", 0))
    assert len(calls) == 1


@pytest.mark.quick
def test_caps_per_split_from_cli_and_toml(tmp_path):
    assert parse_cap("max_read_mbps", "10") == {"train": 10.0, "val": 10.0}
    assert parse_cap("max_read_mbps", "train=10,val=2.5") == {"train": 10.0, "val": 2.5}
    assert parse_cap("max_iops", {"val": 50}) == {"val": 50.0}
    for bad in ("0", "fast", "test=3", "train=x"):
        with pytest.raises(UsageError):
            parse_cap("max_read_mbps", bad)
    (tmp_path / "train" / "a").mkdir(parents=True)
    conf = tmp_path / "c.toml"
    conf.write_text("max_write_mbps = 5\n[max_read_mbps]\ntrain = 20\nval = 4\n")
    s = build_settings({"train_dir": str(tmp_path / "train"), "out_dir": str(tmp_path / "o")}, str(conf))
    assert s.max_read_mbps == {"train": 20.0, "val": 4.0} and s.max_write_mbps == {"train": 5.0, "val": 5.0}


def test_bad_cap_is_a_one_line_error(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    proc = run_cli("convert", str(tmp_path / "train"), str(tmp_path / "o"), "--max-read-mbps", "-3")
    assert proc.returncode == 2 and proc.stderr.strip() == "etl: error: --max-read-mbps must be above 0, got '-3'"


def test_caps_hold_end_to_end(small_tree, tmp_path):
    out = tmp_path / "o"
    proc = run_cli("convert", str(small_tree / "val"), str(out), "--val-pct", "0", "--quiet",
                   "--max-read-mbps", "0.4", "--max-write-mbps", "0.05", "--adaptive-io")
    assert proc.returncode == 0, proc.stderr
    io = json.loads((out / "report.json").read_text())["splits"]["train"]["io"]
    assert io["max_read_mbps"] == 0.4 and io["max_write_mbps"] == 0.05
    assert io["read_mbps"] <= 0.4 * 1.25 and io["write_mbps"] <= 0.05 * 1.25  # generous: a short run
    assert io["workers_throttled_seconds"] > 0 and io["writer_throttled_seconds"] > 0
    assert set(io["adaptive"]) == {"read", "write"}
