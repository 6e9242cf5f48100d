"""The pipes that carry chunk results are widened to hold a whole chunk."""

import fcntl
import multiprocessing as mp
import socket
import threading

from etl.workers import PIPE_BYTES, widen


def test_result_pipes_and_sockets_are_widened():
    ctx = mp.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)  # coordinator -> LMDB writer
    parent, child = ctx.Pipe()  # coordinator <-> worker (a socket pair)
    widen(reader, writer, parent, child)
    assert fcntl.fcntl(writer.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_BYTES
    sock = socket.socket(fileno=parent.fileno())
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= PIPE_BYTES // 8  # capped by wmem_max
    finally:
        sock.detach()
    payload = bytes(range(256)) * 8192  # 2 MB, more than any buffer: still crosses whole
    sender = threading.Thread(target=parent.send_bytes, args=(payload,))
    sender.start()
    assert child.recv_bytes() == payload
    sender.join(10)
    for conn in (reader, writer, parent, child):
        conn.close()
