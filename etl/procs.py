"""Procs: helpers for the processes etl starts: start method, signals, exit reasons, memory, socket buffers."""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import multiprocessing as mp
import os
import resource
import signal
import socket
import stat
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext, ForkServerContext, ForkServerProcess
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
PR_SET_PDEATHSIG = 1
NO_WRITER_EXIT = 75  # a worker's exit code when it cannot reach the writer (EX_TEMPFAIL)
PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size: a whole chunk's results in one or two system calls
PRELOAD = ["etl.workers", "etl.writer"]


@functools.cache
def etl_digest() -> str:
    """The etl this process imports, as a digest of its source files: a Ray task checks that its node's etl, and
    its worker processes' (etl.runners.ray), is the driver's: another etl would write other files."""
    import etl

    root = Path(etl.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def send_etl_digest(conn: Connection) -> None:
    """A child's etl_digest, sent back to its parent."""
    conn.send(etl_digest())


def child_etl_digest(ctx: BaseContext, timeout: float = 60.0) -> str | None:
    """The etl a process started by `ctx` imports (None: it could not say; an older etl lacks send_etl_digest)."""
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=send_etl_digest, args=(send,), daemon=True)
    proc.start()
    send.close()
    try:
        return recv.recv() if recv.poll(timeout) else None
    except (EOFError, OSError):
        return None
    finally:
        recv.close()
        proc.join(5.0)
        if proc.is_alive():
            proc.kill()


@contextmanager
def main_module_hidden() -> Iterator[None]:
    """While a child is started, show multiprocessing a __main__ without a file, as in an interactive session.

    A forkserver child otherwise runs the caller's script again (as __mp_main__) before its target: a script
    that calls etl.convert without `if __name__ == "__main__":` would start a second conversion in every child.
    etl's children run etl's own functions and need nothing from the caller's __main__. Swapped back at once:
    the start takes milliseconds, on the thread that starts every child."""
    main = sys.modules.get("__main__")
    if main is None or (getattr(main, "__file__", None) is None and getattr(main, "__spec__", None) is None):
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _ForkServerProcess(ForkServerProcess):
    """A forkserver child that does not run the caller's __main__ again (main_module_hidden)."""

    @staticmethod
    def _Popen(process_obj: BaseProcess) -> Any:  # noqa: N802 (multiprocessing's name)
        with main_module_hidden():
            return ForkServerProcess._Popen(process_obj)


class _ForkServerContext(ForkServerContext):
    Process = _ForkServerProcess  # type: ignore[assignment]


def mp_context(start_method: str | None = None) -> BaseContext:
    """How worker and writer processes start.

    By default a forkserver with etl preloaded: children start from a clean single-threaded server.
    Plain fork is faster to start (~0.2 s per run) but only safe from a process that never used
    OpenCV's thread pool: a forked worker deadlocks on its first cv2 call when the parent's pool
    was busy (seen with `etl demo`, which draws its images with OpenCV). `etl convert` knows its
    coordinator runs OpenCV only for the mean image, after its last fork, and asks for fork. spawn where neither exists.
    """
    methods = mp.get_all_start_methods()
    if start_method == "fork" and "fork" in methods:
        return mp.get_context("fork")
    if "forkserver" in methods:
        ctx = _ForkServerContext()
        ctx.set_forkserver_preload(PRELOAD)
        forkserver.ensure_running()  # it imports the preload while the caller goes on (scanning)
        return ctx
    return mp.get_context("spawn")


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM back for a moment: while a process is being forked (so the child can
    install its own handlers first), or while a message is half-way into a pipe."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def start_child(proc: BaseProcess) -> None:
    """Start a process with the stop signals held back, so it installs its own handlers first."""
    with stop_signals_blocked():
        proc.start()


def child_signals(ignore_sigterm: bool) -> None:
    """A child's signal set-up: Ctrl-C is the coordinator's to handle; SIGTERM is ignored (the writer
    commits on the coordinator's word) or kills (workers); both unblocked after start_child."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_sigterm else signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def die_with_parent() -> None:
    """Linux: have the kernel kill this worker if its parent (the forkserver) dies. The coordinator's
    death is noticed by the task-reading thread, which sees its pipe close."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the between-tasks parent check still applies


def exit_reason(code: int | None) -> str:
    """A child's exit code in words, for the report and error messages."""
    if code is None:
        return "stopped answering"
    if code == NO_WRITER_EXIT:
        return f"could not connect to the LMDB writer (exit code {code})"
    if code < 0:
        name = signal.Signals(-code).name
        return f"was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exited with code {code}"


def release(proc: BaseProcess, *conns: Connection, grace: float) -> None:
    """Kill if still running, reap, and close its pipes and handle now, not whenever the garbage collector
    runs: a stale object closing its file descriptor later could hit a number since reused by a newer
    pipe (in this process, or in a child forked while the object was still around)."""
    if proc.is_alive():
        proc.kill()
    proc.join(grace)
    for conn in conns:
        conn.close()
    try:
        proc.close()
    except ValueError:
        pass  # still running after a kill and the grace time: leave it to the OS


def peak_rss_kb() -> int:
    """This process's peak resident set size in KiB.

    /proc's VmHWM, where there is one: ru_maxrss survives exec(), so a process started from a big
    parent would report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def widen(*conns: Connection) -> None:
    """Give the pipes (or sockets) that carry chunk results room for a whole chunk: 64 KB pipes split a
    1 MB chunk into 16 reads and writes, each waking the other side. Best effort: limits may refuse."""
    for conn in conns:
        fd = conn.fileno()
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            else:
                sock = socket.socket(fileno=os.dup(fd))
                with sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIPE_BYTES)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PIPE_BYTES)
        except OSError:
            pass
