"""Registry: the one list of input kinds, and the choice of the one that takes a given path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from etl.errors import UsageError
from etl.sources.archive import ArchiveSource, TarFolderSource
from etl.sources.base import Source
from etl.sources.folder import FolderSource
from etl.sources.listfile import BOM, SNIFF_BYTES, ListSource
from etl.sources.tarscan import BLOCK, TAIL_SLACK
from etl.words import cut_at_word


class SourceKind(Protocol):
    def __call__(self, path: str, progress: bool = False, saved: Path | None = None) -> Source: ...

    @staticmethod
    def accepts(path: str) -> bool: ...


# A new input kind is a module in etl/sources/ and one line here; the first that accepts a path takes it.
SOURCES: list[SourceKind] = [
    ArchiveSource,
    TarFolderSource,
    ListSource,
    FolderSource,
]


def find_kind(path: str) -> SourceKind | None:
    """The first input kind that takes this path, if any."""
    return next((kind for kind in SOURCES if kind.accepts(path)), None)


def found_instead(path: str) -> str:
    """What a file that no input kind takes holds, in words: an empty file, an empty or cut tar, a list
    without 'path label' lines; '' for some other file (the refusal says it, not only what it is not)."""
    if not os.path.isfile(path):
        return "is not a regular file"  # a FIFO or a device: opening it to look could block
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if size == 0:
        return "is an empty file"
    if head.count(0) == len(head):
        if size <= TAIL_SLACK and size == len(head):
            return "is an empty tar, only the zeros that end one"
        return "starts with zeros where a tar header should be: a partly downloaded file? Download it again"
    if b"\0" in head:
        if size < BLOCK:
            return f"is {size} bytes, less than one tar header: a tar cut short? Download it again"
        return ""  # some other file: the refusal's words say it all
    lines = [line for line in head.removeprefix(BOM).decode("utf-8", "replace").split("\n") if line.strip()]
    if not lines:
        return "is an empty list, only blank lines"
    return f"is a text file whose first line {cut_at_word(lines[0].strip(), 60)!r} is not 'path label'"


def open_source(path: str, progress: bool = False, saved: Path | None = None, root: str | None = None,
                keep_blank: bool = False) -> Source:
    """progress: show a bar while the input is scanned (an archive's index); saved: the checkpoint folder
    of the run being resumed, where it kept what its scan found; root: the folder a list's paths are under;
    keep_blank: a list's blank lines keep their place (convert_imageset numbers them)."""
    kind = find_kind(path)
    if kind is None:
        raise UsageError(f"not an input etl can read: {path}")
    if kind is ListSource:
        return ListSource(path, progress, saved, root, keep_blank)
    return kind(path, progress, saved)
