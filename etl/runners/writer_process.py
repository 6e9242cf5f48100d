"""Writer process: the coordinator's handle on one split's writer: start it, read its messages, finish, release."""

from __future__ import annotations

import signal
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

from etl.errors import PipelineError
from etl.messages import Done, Progress, Ready, ResultsLink, WriterError, WriterSummary
from etl.procs import exit_reason, release, start_child, stop_signals_blocked
from etl.throttle import SharedState
from etl.writer import WriterSpec, writer_main

POLL_SECONDS = 0.2


def gone(code: int | None) -> str:
    """The writer's end in words; a SIGKILL is most often the kernel's out-of-memory killer, and resuming
    with the same buffers would meet it again."""
    text = f"the LMDB writer {exit_reason(code)}"
    if code == -signal.SIGKILL:
        text += "; --resume may take a lower --max-buffer-mb or --workers"
    if code == -signal.SIGBUS:  # LMDB writes through memory maps: a full disk (a tmpfs above all) ends it so
        text += " (most often the output disk is full: free space first)"
    return text


class WriterProcess:
    """The writer and its two pipes: the closing word goes in on one, Ready, Progress, a WriterError and
    the WriterSummary come out on the other. Workers reach it at `link`. Progress messages are handed
    to on_progress as they are read, whichever call reads them."""

    def __init__(self, ctx: BaseContext, spec: WriterSpec, on_progress: Callable[[Progress], None],
                 write_budget: SharedState | None = None) -> None:
        self.on_progress = on_progress
        self.link = ResultsLink.new()
        writer_in, self.to_writer = ctx.Pipe(duplex=False)
        self.from_writer, writer_out = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=writer_main, args=(spec, writer_in, writer_out, write_budget, self.link),
                                name="etl-writer", daemon=True)
        start_child(self.proc)
        writer_in.close()
        writer_out.close()

    @property
    def sentinel(self) -> int:
        return self.proc.sentinel

    def ready(self) -> Ready:
        """Its first word: where to start."""
        return self.until(Ready)

    def message(self) -> Any:
        """Its next message; errors raise, progress goes to on_progress (returns None), the rest is returned."""
        try:
            msg = self.from_writer.recv()
        except (EOFError, OSError):
            self.proc.join(2.0)
            raise PipelineError(f"{gone(self.proc.exitcode)}; the database holds its "
                                "last commit: run the same command with --resume") from None
        if isinstance(msg, WriterError):
            raise PipelineError(msg.message)
        if isinstance(msg, Progress):
            self.on_progress(msg)
            return None
        return msg

    def drain(self) -> WriterSummary | None:
        """Read what it has said so far; returns a summary it sent before being told to finish (it saw
        its input end early). Raises when it is gone."""
        while self.from_writer.poll():
            msg = self.message()
            if isinstance(msg, WriterSummary):
                return msg
        if self.proc.exitcode is not None and not self.from_writer.poll():
            raise PipelineError(f"{gone(self.proc.exitcode)}; run again with --resume")
        return None

    def until(self, kind: type) -> Any:
        """Wait for its next message of `kind`, taking progress on the way."""
        while True:
            if not self.from_writer.poll(POLL_SECONDS):
                if self.proc.exitcode is not None:
                    raise PipelineError(gone(self.proc.exitcode))
                continue
            msg = self.message()
            if isinstance(msg, kind):
                return msg

    def finish(self, complete: bool) -> WriterSummary:
        """Send the closing word, wait for the summary and for the process to end."""
        self.send_done(complete)
        summary = self.until(WriterSummary)
        self.proc.join(10.0)
        return summary

    def send_done(self, complete: bool) -> None:
        """The closing word. One, never two: the writer finishes on it and may be gone before a second
        message arrives, which then fails with a broken pipe."""
        try:
            with stop_signals_blocked():  # a Ctrl-C half-way through a message would wedge the writer
                self.to_writer.send(Done(complete))
        except OSError:  # the writer is gone: its last message says why
            self.proc.join(2.0)
            self.drain()
            raise PipelineError(f"{gone(self.proc.exitcode)}; run again with --resume") \
                from None

    def is_alive(self) -> bool:
        return self.proc.is_alive()

    def release(self) -> None:
        """Kill it if it still runs, and close its pipes and process handle now (see etl.procs.release)."""
        release(self.proc, self.to_writer, self.from_writer, grace=5.0)
