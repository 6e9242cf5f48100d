"""The pipes and sockets that carry chunk results are widened to hold a whole chunk."""

import fcntl
import multiprocessing as mp
import socket
import threading

import pytest

from etl.procs import PIPE_BYTES, widen

pytestmark = pytest.mark.quick


def send_buffer(conn) -> int:
    sock = socket.socket(fileno=conn.fileno())
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    finally:
        sock.detach()


def test_result_pipes_and_sockets_are_widened():
    ctx = mp.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)  # coordinator -> LMDB writer
    parent, child = ctx.Pipe()  # a socket pair, as between a worker and the writer
    before = fcntl.fcntl(writer.fileno(), fcntl.F_GETPIPE_SZ), send_buffer(parent)
    widen(reader, writer, parent, child)
    assert before[0] < PIPE_BYTES == fcntl.fcntl(writer.fileno(), fcntl.F_GETPIPE_SZ)
    assert send_buffer(parent) > before[1]  # as far as net.core.wmem_max lets it grow
    payload = bytes(range(256)) * 8192  # 2 MB, more than any buffer: still crosses whole
    sender = threading.Thread(target=parent.send_bytes, args=(payload,))
    sender.start()
    assert child.recv_bytes() == payload
    sender.join(10)
    for conn in (reader, writer, parent, child):
        conn.close()
