"""Door: how chunks reach the writer: each worker's authenticated socket, and the coordinator's pipe, read
into one inbox by threads so the senders never wait on a commit's fsync."""

from __future__ import annotations

import os
import queue
import socket
import struct
import threading
import time
from multiprocessing.connection import Listener, answer_challenge, deliver_challenge
from typing import Any

from etl.messages import Done
from etl.procs import widen

HANDSHAKE_SECONDS = 5.0  # a connection that has not proven its key by then is dropped
MAX_HANDSHAKES = 64  # handshakes in progress at once; more connections are dropped at the door


def receive_closing_word(data_conn: Any, inbox: queue.Queue, parent: int, why: list[str]) -> None:
    """The coordinator's pipe carries its closing word: Done(complete=True) goes in the inbox; anything
    else, or the pipe closing, or the coordinator dying, ends the input (then None goes in)."""
    try:
        while True:
            if not data_conn.poll(1.0):
                if os.getppid() != parent:
                    why.append("its parent changed")
                    break  # the coordinator was killed: commit what is in order, then stop
                continue
            msg = data_conn.recv()
            if isinstance(msg, Done) and msg.complete:
                inbox.put(msg)
                return
            why.append("end of input")
            break
    except (EOFError, OSError) as exc:
        why.append(f"{type(exc).__name__} {exc}")  # the coordinator is gone: treat as the end
    inbox.put(None)


def accept_workers(listener: Listener, authkey: bytes, inbox: queue.Queue) -> None:
    """Each worker connects once; a thread per connection checks its key, then reads its chunks into
    the inbox. The key is checked there, not here, with a time limit and a bound on how many at
    once, so that a peer that dies, stalls or crowds the door costs its own connection only."""
    handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
    while True:
        conn, admitted = None, False
        try:
            conn = listener.accept()  # the listener has no authkey: accept() does no handshake
            admitted = handshakes.acquire(blocking=False)
            if not admitted:
                conn.close()  # a worker turned away retries as its replacement
                continue
            threading.Thread(target=_receive_chunks, args=(conn, authkey, handshakes, inbox), daemon=True).start()
        except Exception:  # out of descriptors or threads for a moment: drop this one, keep the door open
            if admitted:
                handshakes.release()
            if conn is not None:
                conn.close()
            time.sleep(0.1)


def _receive_chunks(conn: Any, authkey: bytes, handshakes: threading.BoundedSemaphore, inbox: queue.Queue) -> None:
    try:
        try:
            _receive_timeout(conn, HANDSHAKE_SECONDS)
            deliver_challenge(conn, authkey)  # what Listener.accept() would do with an authkey
            answer_challenge(conn, authkey)
            _receive_timeout(conn, 0.0)
        finally:
            handshakes.release()
        widen(conn)
        while True:
            inbox.put(conn.recv_bytes())
    except Exception:  # a stranger, a timeout, or a worker gone: this connection ends, nothing else
        # A chunk half sent by a dying worker is lost here; the coordinator, which never got its
        # number back, runs it again.
        conn.close()


def _receive_timeout(conn: Any, seconds: float) -> None:
    """SO_RCVTIMEO on the connection's socket (0: none); a read past it fails instead of waiting."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        whole = int(seconds)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6)))
