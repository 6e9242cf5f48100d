"""Errors: the exceptions that end a run early, each carrying the message the CLI prints."""

from __future__ import annotations

import errno
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
    full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in text
    again = "run the same command" if fresh else "run the same command with --resume"
    if full or shutil.disk_usage(out_dir).free < DISK_FULL_BYTES:
        return f"the disk is full: etl could not write {what} ({text}); free space, then {again}"
    held = "nothing is converted yet" if fresh else "the database holds its last commit"
    return f"writing {what} failed ({type(exc).__name__}: {text}); {held}: fix the cause, then {again}"
