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


@contextmanager
def exclusive(out: str | Path) -> Iterator[None]:
    """Held for a whole conversion; the kernel releases it when the process ends, however it ends."""
    path = lock_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:  # a read-only or full disk, or a folder this user may not write: before any work
        raise UsageError(write_failure(exc, path, "the same command", f"etl writes its output in {out}: make it "
                                       "writable, or work on a copy on a disk that is")) from None
    try:
        _lock(fd, fcntl.LOCK_EX, lambda: f"{out} is in use by another etl run ({_holder(path)}): wait for it to "
                                         "end, or choose another output folder")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


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
    database), the folder around it (the dataset around a split's database), and around a shard
    (OUT/<split>_db/<shard>) the dataset too. A folder without etl's checkpoint folder has no lock: shared()
    passes it."""
    path = path.absolute()
    around = [path, path.parent]
    if path.parent.name.endswith("_db"):
        around.append(path.parent.parent)
    return around


@contextmanager
def shared_around(path: str | Path, then: str = "verify it") -> Iterator[None]:
    """shared() on every folder whose lock covers `path` (owners): a shard is read only while no run writes OUT."""
    with ExitStack() as stack:
        for folder in owners(Path(path)):
            stack.enter_context(shared(folder, then))
        yield
