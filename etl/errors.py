"""Errors: the exceptions that end a run early, each carrying the message the CLI prints."""

from __future__ import annotations

import errno
import os
import shutil

DISK_FULL_BYTES = 1 << 20  # numpy and others report a short write without ENOSPC: check what is left


class UsageError(Exception):
    """A bad argument or input folder: reported as one line, before any work starts."""


class PipelineError(Exception):
    """The run could not finish (the writer failed); the message says what happened."""


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or --on-error fail: the run stopped early with its work committed."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def describe_write_error(exc: BaseException, out_dir: str, what: str = "the database", fresh: bool = False) -> str:
    """A failed write to the dataset, in words that say what to do: the last commit stands, so --resume.
    fresh: the run failed before its checkpoint existed, so there is nothing to resume: the same command again."""
    text = str(exc)
    again = "run the same command" if fresh else "run the same command with --resume"
    if _full(exc, out_dir):
        return f"the disk is full: etl could not write {what} ({text}); free space, then {again}"
    held = "nothing is converted yet" if fresh else "the database holds its last commit"
    return f"writing {what} failed ({type(exc).__name__}: {text}); {held}: fix the cause, then {again}"


def _full(exc: BaseException, folder: str) -> bool:
    """ENOSPC, or (LMDB reports a short write as EIO) almost no room left where the file was written."""
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in str(exc):
        return True
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_BYTES
    except OSError:
        return False


def write_failure(exc: BaseException, path: str | os.PathLike[str], retry: str, elsewhere: str) -> str:
    """A file of etl merge or etl mean that could not be written, in one line (the caller has removed what it
    half-wrote). retry: the command to run again once there is room; elsewhere: what to do on a read-only disk."""
    text = getattr(exc, "strerror", None) or str(exc)
    if _full(exc, os.path.dirname(os.path.abspath(path))):
        return f"cannot write {path}: the disk is full ({text}); free space, then run {retry} again"
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path}: {text}; {elsewhere}"
    return f"cannot write {path} ({type(exc).__name__}: {text}); fix the cause, then run {retry} again"
