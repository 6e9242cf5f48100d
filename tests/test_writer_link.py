"""Workers send chunks straight to the writer: duplicates, half-sent chunks and strangers."""

import multiprocessing as mp
import pickle
import socket
import struct
import threading
import time
from multiprocessing.connection import Client
from pathlib import Path

import lmdb
import pytest

import etl.door as door_module
from etl.messages import ChunkResult, Record, WriterSummary
from etl.runners.writer_process import WriterProcess
from etl.writer import WriterSpec


def chunk(cid: int, per_chunk: int = 3) -> bytes:
    records = [Record(cid * per_chunk + i, i, f"c/{cid}_{i}.jpg", b"datum-%d-%d" % (cid, i)) for i in range(per_chunk)]
    return pickle.dumps(ChunkResult(cid, records))


class Counted:
    """The writer's progress messages, counted as the handle reads them."""

    def __init__(self) -> None:
        self.chunks = 0

    def __call__(self, progress) -> None:
        self.chunks += 1


@pytest.fixture
def writer(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(door_module, "HANDSHAKE_SECONDS", 1.5)  # the writer is forked: it sees these
    monkeypatch.setattr(door_module, "MAX_HANDSHAKES", 3)
    (tmp_path / ".etl").mkdir()
    spec = WriterSpec("train", str(tmp_path), "", 100, False, mean=None)
    counted = Counted()
    handle = WriterProcess(mp.get_context("fork"), spec, counted)
    handle.ready()
    yield handle.link, handle, counted, tmp_path
    handle.proc.join(10)
    handle.release()


def finish(handle: WriterProcess) -> WriterSummary:
    return handle.finish(complete=True)


def wait_written(handle: WriterProcess, counted: Counted, chunks: int) -> None:
    target = counted.chunks + chunks
    while counted.chunks < target:
        assert handle.from_writer.poll(20), "the writer wrote nothing for 20 s"
        handle.message()


def keys(out: Path) -> list[bytes]:
    env = lmdb.open(str(out / "train_db"), readonly=True, lock=False)
    with env.begin() as txn:
        found = [k for k, _ in txn.cursor()]
    env.close()
    return found


@pytest.mark.quick
def test_a_chunk_delivered_twice_is_written_once(writer):
    link, handle, counted, out = writer
    first, second = (Client(link.address, family="AF_UNIX", authkey=link.authkey) for _ in range(2))
    first.send_bytes(chunk(1))
    first.send_bytes(chunk(0))
    wait_written(handle, counted, 2)
    second.send_bytes(chunk(0))  # a worker died after sending chunk 0; its replacement sent it again
    second.send_bytes(chunk(2))
    wait_written(handle, counted, 1)
    first.close()
    second.close()
    summary = finish(handle)
    assert summary.written == 9 and "with 0 chunks pending" in summary.ended_by
    assert keys(out) == [b"%08d_%d" % (i, i % 3) for i in range(9)]


@pytest.mark.quick
def test_a_half_sent_chunk_is_dropped_and_its_rerun_written(writer):
    link, handle, counted, out = writer
    dying = Client(link.address, family="AF_UNIX", authkey=link.authkey)
    whole = chunk(0)
    dying._send(struct.pack("!i", len(whole)) + whole[: len(whole) // 2])  # killed half-way through
    dying.close()
    rerun = Client(link.address, family="AF_UNIX", authkey=link.authkey)
    rerun.send_bytes(whole)
    wait_written(handle, counted, 1)
    rerun.close()
    assert finish(handle).written == 3
    assert len(keys(out)) == 3


@pytest.mark.quick
def test_a_stranger_without_the_key_cannot_write(writer):
    link, handle, counted, out = writer
    with pytest.raises(mp.AuthenticationError):
        Client(link.address, family="AF_UNIX", authkey=b"not the key")
    ours = Client(link.address, family="AF_UNIX", authkey=link.authkey)  # and the door stays open
    ours.send_bytes(chunk(0))
    wait_written(handle, counted, 1)
    ours.close()
    assert finish(handle).written == 3


@pytest.mark.quick
def test_peers_that_die_or_stall_in_the_handshake_do_not_close_the_door(writer):
    """Before, one connect-and-close (a worker killed while connecting) stopped the writer accepting,
    and the next replacement worker hung for ever."""
    link, handle, counted, out = writer
    for _ in range(3):  # connect and vanish at once
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(link.address)
        sock.close()
    silent = socket.socket(socket.AF_UNIX)  # connect and never answer the challenge
    silent.connect(link.address)
    connected: list = []
    attempt = threading.Thread(target=lambda: connected.append(
        Client(link.address, family="AF_UNIX", authkey=link.authkey)), daemon=True)
    attempt.start()
    attempt.join(20)
    assert connected, "a worker could not connect after the bad peers"
    worker = connected[0]
    worker.send_bytes(chunk(0))
    wait_written(handle, counted, 1)
    worker.close()
    silent.close()
    assert finish(handle).written == 3


def read_until_closed(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    data = b""
    while chunk := sock.recv(1024):
        data += chunk
    return data


def test_strangers_are_dropped_after_the_handshake_time_and_beyond_the_crowd_limit(writer):
    """A silent peer holds a thread and a descriptor only for HANDSHAKE_SECONDS; past MAX_HANDSHAKES
    waiting at once, newcomers are closed at the door; workers still get in afterwards."""
    link, handle, counted, out = writer
    silent = [socket.socket(socket.AF_UNIX) for _ in range(4)]
    for sock in silent:
        sock.connect(link.address)
    turned_away = read_until_closed(silent[3], 5)
    assert turned_away == b""  # closed before any challenge was sent
    for sock in silent[:3]:
        started = time.monotonic()
        assert read_until_closed(sock, 5)  # the challenge came, then the writer gave up waiting
        assert time.monotonic() - started < 5
        sock.close()
    worker = Client(link.address, family="AF_UNIX", authkey=link.authkey)
    worker.send_bytes(chunk(0))
    wait_written(handle, counted, 1)
    worker.close()
    assert finish(handle).written == 3
