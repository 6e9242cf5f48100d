"""Messages: every typed record that passes between processes (coordinator, workers, writer)."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from multiprocessing.connection import arbitrary_address
from typing import Any, NamedTuple

import numpy as np


class Item(NamedTuple):
    """One source image: its place in the write order, where it is, its label; an archive member also
    carries where its bytes lie in the archive (-1 for a file)."""

    index: int
    path: str
    label: int
    offset: int = -1
    size: int = -1


class Task(NamedTuple):
    """A chunk of consecutive items handed to one worker; give_up: items not to try again, and why."""

    chunk_id: int
    items: tuple[Item, ...]
    give_up: dict[int, str] = {}


class Record(NamedTuple):
    """One converted image, ready for the writer: a serialized Datum, and its CRC-32 (-1: not computed),
    which the worker computes so that the writer, the serial part, does not."""

    index: int
    label: int
    path: str
    value: bytes
    crc: int = -1


class Failure(NamedTuple):
    """An image that was skipped, and why."""

    path: str
    reason: str


STAGES = ("read", "decode", "resize", "encode", "datum")


def add_counts(total: dict[str, int], more: dict[str, int]) -> None:
    """One tally of kinds (colour_conversions) added into another."""
    for kind, n in more.items():
        total[kind] = total.get(kind, 0) + n


@dataclass
class ChunkResult:
    """What a worker returns for a task: records in item order, skips, warnings, pixel sum."""

    chunk_id: int
    records: list[Record] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    warnings: list[Failure] = field(default_factory=list)
    pixel_sum: np.ndarray | None = None  # the tail of a meansum.SumLayout vector, from sum_offset on
    sum_offset: int = 0
    bytes_read: int = 0
    throttled_seconds: float = 0.0
    max_rss_kb: int = 0  # the worker's peak resident memory so far
    cpu_seconds: float = 0.0  # the worker's CPU time (user + system) spent on this chunk
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    input_stamp: int = 0  # etl.checkpoint.stamp_sum of the task's items, every one of them: what resume checks
    colour_conversions: dict[str, int] = field(default_factory=dict)  # etl.codec.colour_conversion kind -> images


class ResultsLink(NamedTuple):
    """Where workers send their chunk results straight to the writer: its listening socket, and the
    key that admits them (multiprocessing's challenge, so no other local process can write in)."""

    address: str
    authkey: bytes

    @classmethod
    def new(cls) -> ResultsLink:
        if sys.platform.startswith("linux"):  # an abstract socket: no file to leave behind if killed
            return cls(f"\0etl-{os.getpid()}-{secrets.token_hex(8)}", secrets.token_bytes(16))
        return cls(arbitrary_address("AF_UNIX"), secrets.token_bytes(16))


class Progress(NamedTuple):
    """The writer's word to the coordinator after it took a chunk, in order."""

    chunk_id: int
    written: int
    failures: list[Failure]
    warnings: list[Failure]
    bytes_read: int
    stage_seconds: dict[str, float]
    bytes_written: int
    throttled_seconds: float
    worker_max_rss_kb: int
    worker_cpu_seconds: float
    colour_conversions: dict[str, int] = {}  # never changed in place: a default is shared


@dataclass
class SplitState:
    """Where a split stood after a commit: chunks and records done, and the counts to carry on."""

    chunks: int = 0
    records: int = 0
    complete: bool = False
    per_label: dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    # The stamps of the items of chunks 0..chunks-1 (etl.checkpoint.stamp_sum); None: not recorded (an older
    # etl's checkpoint, and every later commit of a run it started), so a resume cannot check them.
    input_stamp: int | None = 0
    colour_conversions: dict[str, int] = field(default_factory=dict)  # ChunkResult's, added up

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SplitState:
        return cls(**{"input_stamp": None, **raw})


class Done(NamedTuple):
    """The coordinator's closing word. To the writer: complete (every chunk was delivered) or stop early
    (commit what is in order, mark the split incomplete). To a worker: no more tasks."""

    complete: bool


class Delivered(NamedTuple):
    """A worker's word to the coordinator: this chunk's result is with the writer, so it has room for a task."""

    chunk_id: int


class Ready(NamedTuple):
    """The writer's first word: the chunk to start from and what earlier runs already did."""

    start_chunk: int
    state: SplitState
    skipped: list[Failure]
    warned: list[Failure]


class WriterError(NamedTuple):
    """The writer cannot go on (disk full, I/O error); the database holds the last commit."""

    message: str


@dataclass
class WriterSummary:
    """The writer's last word: what it wrote, what writing cost, and the mean's final pixel sum."""

    written: int = 0
    commits: int = 0
    map_size: int = 0
    data_bytes: int = 0
    cpu_seconds: float = 0.0
    put_seconds: float = 0.0
    commit_seconds: float = 0.0
    throttled_seconds: float = 0.0
    max_rss_kb: int = 0
    ended_by: str = ""
    per_label: dict[str, int] = field(default_factory=dict)
    sum_chunks: int = 0  # a complete train split: the commit whose saved pixel sum makes the mean (0: none)
