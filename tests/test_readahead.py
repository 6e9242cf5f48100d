"""Read-ahead: items come back in order, at most `depth` are read ahead, failures surface where the item is
taken, reads are charged to the budget when made, and the output does not change with the depth."""

from __future__ import annotations

import threading
import time

import pytest

from etl.messages import Item
from etl.readahead import ReadAhead
from etl.sources.base import Unreadable

from .conftest import run_cli
from .test_end_to_end import all_records


class Gate:
    """A stand-in ReadGate: records which items were read and when; `slow` makes each read take a while."""

    def __init__(self, bad: set[int] = frozenset(), slow: float = 0.0) -> None:
        self.bad, self.slow = bad, slow
        self.read_order: list[int] = []
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0

    def read(self, item: Item) -> bytes:
        with self.lock:
            self.read_order.append(item.index)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.slow)
        with self.lock:
            self.in_flight -= 1
        if item.index in self.bad:
            raise Unreadable("cannot read: gone")
        return b"%d" % item.index


def items(n: int) -> list[Item]:
    return [Item(i, f"{i}.jpg", 0) for i in range(n)]


@pytest.mark.quick
@pytest.mark.parametrize("depth", [0, 1, 3, 8])
def test_items_come_back_in_order_and_no_more_than_depth_are_read_ahead(depth):
    gate = Gate(slow=0.002)
    ahead = ReadAhead(gate.read, depth)
    chunk = items(20)
    ahead.plan(chunk)
    for item in chunk:
        time.sleep(0.003)  # the decoder at work: the thread fills up to depth meanwhile
        started = len(gate.read_order)
        assert started - item.index <= max(depth, 1)
        assert ahead.take(item)[0] == b"%d" % item.index
    assert sorted(gate.read_order) == list(range(20))  # each read once (threads may start them out of order)
    ahead.close()


@pytest.mark.quick
@pytest.mark.parametrize("depth", [4, 16])
def test_the_reads_ahead_wait_together(depth):
    """A slow storage's waits overlap: every image ahead has its read in flight, up to MAX_READ_THREADS."""
    from etl.readahead import MAX_READ_THREADS

    gate = Gate(slow=0.2)
    ahead = ReadAhead(gate.read, depth)
    chunk = items(depth + 4)
    ahead.plan(chunk)
    time.sleep(0.1)  # every thread has taken its read and waits in it
    assert gate.most_in_flight == min(depth, MAX_READ_THREADS)
    assert [ahead.take(item)[0] for item in chunk] == [b"%d" % i for i in range(depth + 4)]
    assert gate.most_in_flight <= min(depth, MAX_READ_THREADS)
    ahead.close()


@pytest.mark.quick
def test_a_failed_read_raises_when_its_item_is_taken_and_the_rest_go_on():
    gate = Gate(bad={2})
    ahead = ReadAhead(gate.read, 4)
    chunk = items(5)
    ahead.plan(chunk)
    got: list[bytes | str] = []
    for item in chunk:
        try:
            got.append(ahead.take(item)[0])
        except Unreadable as exc:
            got.append(str(exc))
    assert got == [b"0", b"1", "cannot read: gone", b"3", b"4"]
    ahead.close()


@pytest.mark.quick
def test_items_never_taken_are_dropped_and_the_next_chunk_starts_clean():
    gate = Gate()
    ahead = ReadAhead(gate.read, 3)
    chunk = items(6)
    ahead.plan(chunk)
    assert ahead.take(chunk[0])[0] == b"0"
    assert ahead.take(chunk[3])[0] == b"3"  # 1 and 2 stopped before their read (a fault, a bad image)
    ahead.clear()
    nxt = [Item(10 + i, f"{10 + i}.jpg", 0) for i in range(3)]
    ahead.plan(nxt)
    assert [ahead.take(item)[0] for item in nxt] == [b"10", b"11", b"12"]
    ahead.close()


def convert(tree, out, *extra: str) -> None:
    proc = run_cli("convert", str(tree / "train"), str(out), "--val", str(tree / "val"), "--quiet", *extra)
    assert proc.returncode == 0, proc.stderr


def test_the_dataset_is_the_same_whatever_the_read_ahead(small_tree, tmp_path):
    convert(small_tree, tmp_path / "none", "--read-ahead", "0", "--workers", "2")
    convert(small_tree, tmp_path / "deep", "--read-ahead", "16", "--workers", "2", "--chunk-size", "5")
    for name in ("train_db", "val_db"):
        assert all_records(tmp_path / "none" / name) == all_records(tmp_path / "deep" / name)
    for name in ("labels.txt", "train.txt", "val.txt", "mean.binaryproto"):
        assert (tmp_path / "none" / name).read_bytes() == (tmp_path / "deep" / name).read_bytes()


def test_read_ahead_is_refused_outside_its_range(tmp_path):
    (tmp_path / "in" / "a").mkdir(parents=True)
    proc = run_cli("convert", str(tmp_path / "in"), str(tmp_path / "o"), "--read-ahead", "-1")
    assert proc.returncode == 2 and "--read-ahead must be from 0 to 256" in proc.stderr


