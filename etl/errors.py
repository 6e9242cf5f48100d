"""Errors: the exceptions that end a run early, each carrying the message the CLI prints."""

from __future__ import annotations


class UsageError(Exception):
    """A bad argument or input folder: reported as one line, before any work starts."""


class PipelineError(Exception):
    """The run could not finish (the writer failed); the message says what happened."""


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or --on-error fail: the run stopped early with its work committed."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
