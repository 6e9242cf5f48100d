"""Progress: every bar etl shows; a tqdm bar on a terminal, a plain line every few seconds in a log file."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_SECONDS = 5.0  # how often a bar writes its line where the output is not a terminal


class PlainLines:
    """A log's view of a bar: each frame tqdm draws becomes one line of its own, without the carriage returns
    and the padding that redraw a terminal's line (a log file would hold them all on one line)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\n", "").rstrip()
        if line:  # tqdm's clearing writes and its closing newline carry no frame
            self.stream.write(line + "\n")
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressBar(tqdm):
    """tqdm as etl shows it. No monitor thread: workers are forked while a bar is shown, and a fork should find
    no other thread running. Where stderr (the bar's file) is not a terminal, frames are plain lines, at most
    one per LOG_SECONDS, with an ASCII bar: what a batch log can hold."""

    monitor_interval = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        stream = kwargs.get("file") or sys.stderr
        self.plain = not kwargs.get("disable") and not _is_terminal(stream)
        self.shown_n: float | None = None  # the count of the last frame drawn; None: none drawn yet
        if self.plain:
            kwargs.update(file=PlainLines(stream), ascii=True,
                          mininterval=max(kwargs.get("mininterval", 0.0), LOG_SECONDS))
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is None:  # a frame (tqdm clears a line with msg="")
            self.shown_n = self.n
        return bool(super().display(msg, pos))

    def close(self) -> None:
        """In a log, a line once written stays: a bar that showed a frame ends with one line of its final count
        (tqdm's close would repeat the last line of a bar that leaves it, and leave 0% as the last word of one
        that does not), and with no more than one."""
        if self.plain and not self.disable:
            if self.shown_n is not None and self.shown_n != self.n:
                self._ema_dt = lambda: None  # the whole run's rate, as tqdm's own last frame gives
                self.refresh()
            self.leave = False  # tqdm's closing frame would be that line again
        super().close()
