"""Output lock: one etl run per output folder at a time (an exclusive flock); `etl verify` takes a shared one."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from etl.errors import UsageError, write_failure
from etl.layout import CHECKPOINT_DIR, LOCK


def lock_path(out: str | Path) -> Path:
    return Path(out, CHECKPOINT_DIR, LOCK)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def _lock(fd: int, how: int, refusal: Callable[[], str]) -> None:
    """Take the lock at once, or refuse with the message (another run holds it)."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(refusal()) from None


def _say_holder(fd: int) -> None:
    """The holder's pid, for the refusal of a second run: only a hint, so a full disk must not stop the run here
    (the flock holds without it, and the run's first real write says the disk is full, in one line)."""
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass


@contextmanager
def exclusive(out: str | Path) -> Iterator[None]:
    """Held for a whole conversion; the kernel releases it when the process ends, however it ends. The lock
    covers every database inside OUT (its shards too): a run into a folder inside another run's OUT is refused
    while that run holds it, and holds a shared lock on that OUT meanwhile, so that no run replaces it."""
    path = lock_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fds = [os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)]
    except OSError as exc:  # a read-only or full disk, or a folder this user may not write: before any work
        raise UsageError(write_failure(exc, path, "the same command", f"etl writes its output in {out}: make it "
                                       "writable, or work on a copy on a disk that is")) from None
    try:
        _lock(fds[0], fcntl.LOCK_EX, lambda: f"{out} is in use by another etl run ({_holder(path)}): wait for it "
                                             "to end, or choose another output folder")
        for outer in _enclosing_locks(out):
            fd = _open_existing(outer)
            if fd is None:
                continue
            fds.append(fd)
            _lock(fd, fcntl.LOCK_SH, lambda lock=outer: f"{out} is inside {lock.parent.parent}, which is in use "
                                                        f"by another etl run ({_holder(lock)}): wait for it to end, "
                                                        "or choose an output folder outside it")
        _say_holder(fds[0])
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _enclosing_locks(out: str | Path) -> list[Path]:
    """The output locks of the folders that hold OUT (a dataset whose shard folder OUT is, for one)."""
    return [lock_path(folder) for folder in Path(out).resolve().parents if lock_path(folder).is_file()]


def _open_existing(path: Path) -> int | None:
    """An enclosing lock, never made here; None where it cannot be opened (another user's: etl cannot be
    writing there as this user either)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None


@contextmanager
def shared(out: str | Path, then: str = "verify it") -> Iterator[None]:
    """Held while a dataset is read whole (etl verify, etl mean): no conversion may be writing it meanwhile.
    `then`: what to do once that run has ended, in the refusal."""
    path = lock_path(out)
    if not path.parent.is_dir():  # no checkpoint folder (copied without it): nothing writes here through etl
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:  # a read-only copy: etl cannot be writing it either
        yield
        return
    try:
        _lock(fd, fcntl.LOCK_SH, lambda: f"{out} is being written by an etl run ({_holder(path)}): {then} "
                                         "when that run has ended")
        yield
    finally:
        os.close(fd)


def owners(path: Path) -> list[Path]:
    """The folders whose lock an etl run writing `path` holds: the folder itself (a dataset, or etl imageset's
    database) and every folder around it that has an output lock (the dataset around a split's database or a
    shard). A folder without etl's checkpoint folder has no lock: shared() passes it."""
    return [path.absolute(), *(lock.parent.parent for lock in _enclosing_locks(path))]


@contextmanager
def shared_around(path: str | Path, then: str = "verify it") -> Iterator[None]:
    """shared() on every folder whose lock covers `path` (owners): a shard is read only while no run writes OUT."""
    with ExitStack() as stack:
        for folder in owners(Path(path)):
            stack.enter_context(shared(folder, then))
        yield
