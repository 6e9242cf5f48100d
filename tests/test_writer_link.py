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

import etl.writer as writer_module
from etl.records import ChunkResult, Progress, Record, ResultsLink
from etl.writer import Ready, WriterSpec, WriterSummary, writer_main


def chunk(cid: int, per_chunk: int = 3) -> bytes:
    records = [Record(cid * per_chunk + i, i, f"c/{cid}_{i}.jpg", b"datum-%d-%d" % (cid, i)) for i in range(per_chunk)]
    return pickle.dumps(ChunkResult(cid, records))


@pytest.fixture
def writer(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(writer_module, "HANDSHAKE_SECONDS", 1.5)  # the writer is forked: it sees these
    monkeypatch.setattr(writer_module, "MAX_HANDSHAKES", 3)
    ctx = mp.get_context("fork")
    writer_in, to_writer = ctx.Pipe(duplex=False)
    from_writer, writer_out = ctx.Pipe(duplex=False)
    (tmp_path / ".etl").mkdir()
    spec = WriterSpec("train", str(tmp_path), str(tmp_path), True, 100, False, mean=None)
    link = ResultsLink.new()
    proc = ctx.Process(target=writer_main, args=(spec, writer_in, writer_out, None, link))
    proc.start()
    assert isinstance(from_writer.recv(), Ready)
    yield link, to_writer, from_writer, tmp_path
    proc.join(10)
    if proc.is_alive():
        proc.kill()


def finish(to_writer, from_writer) -> WriterSummary:
    to_writer.send_bytes(pickle.dumps("done"))
    while not isinstance(msg := from_writer.recv(), WriterSummary):
        pass
    return msg


def wait_written(from_writer, chunks: int) -> None:
    seen = 0
    while seen < chunks:
        assert from_writer.poll(20), "the writer wrote nothing for 20 s"
        seen += isinstance(from_writer.recv(), Progress)


def keys(out: Path) -> list[bytes]:
    env = lmdb.open(str(out / "train_db"), readonly=True, lock=False)
    with env.begin() as txn:
        found = [k for k, _ in txn.cursor()]
    env.close()
    return found


def test_a_chunk_delivered_twice_is_written_once(writer):
    link, to_writer, from_writer, out = writer
    first, second = (Client(link.address, family="AF_UNIX", authkey=link.authkey) for _ in range(2))
    first.send_bytes(chunk(1))
    first.send_bytes(chunk(0))
    wait_written(from_writer, 2)
    second.send_bytes(chunk(0))  # a worker died after sending chunk 0; its replacement sent it again
    second.send_bytes(chunk(2))
    wait_written(from_writer, 1)
    first.close()
    second.close()
    summary = finish(to_writer, from_writer)
    assert summary.written == 9 and "with 0 chunks pending" in summary.ended_by
    assert keys(out) == [b"%08d_%d" % (i, i % 3) for i in range(9)]


def test_a_half_sent_chunk_is_dropped_and_its_rerun_written(writer):
    link, to_writer, from_writer, out = writer
    dying = Client(link.address, family="AF_UNIX", authkey=link.authkey)
    whole = chunk(0)
    dying._send(struct.pack("!i", len(whole)) + whole[: len(whole) // 2])  # killed half-way through
    dying.close()
    rerun = Client(link.address, family="AF_UNIX", authkey=link.authkey)
    rerun.send_bytes(whole)
    wait_written(from_writer, 1)
    rerun.close()
    assert finish(to_writer, from_writer).written == 3
    assert len(keys(out)) == 3


def test_a_stranger_without_the_key_cannot_write(writer):
    link, to_writer, from_writer, out = writer
    with pytest.raises(mp.AuthenticationError):
        Client(link.address, family="AF_UNIX", authkey=b"not the key")
    ours = Client(link.address, family="AF_UNIX", authkey=link.authkey)  # and the door stays open
    ours.send_bytes(chunk(0))
    wait_written(from_writer, 1)
    ours.close()
    assert finish(to_writer, from_writer).written == 3


def test_peers_that_die_or_stall_in_the_handshake_do_not_close_the_door(writer):
    """Before, one connect-and-close (a worker killed while connecting) stopped the writer accepting,
    and the next replacement worker hung for ever."""
    link, to_writer, from_writer, out = writer
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
    wait_written(from_writer, 1)
    worker.close()
    silent.close()
    assert finish(to_writer, from_writer).written == 3


def read_until_closed(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    data = b""
    while chunk := sock.recv(1024):
        data += chunk
    return data


def test_strangers_are_dropped_after_the_handshake_time_and_beyond_the_crowd_limit(writer):
    """A silent peer holds a thread and a descriptor only for HANDSHAKE_SECONDS; past MAX_HANDSHAKES
    waiting at once, newcomers are closed at the door; workers still get in afterwards."""
    link, to_writer, from_writer, out = writer
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
    wait_written(from_writer, 1)
    worker.close()
    assert finish(to_writer, from_writer).written == 3
