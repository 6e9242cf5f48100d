"""Registry: the one list of input kinds, and the choice of the one that takes a given path."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from etl.errors import UsageError
from etl.sources.archive import ArchiveSource, TarFolderSource
from etl.sources.base import Source
from etl.sources.folder import FolderSource
from etl.sources.listfile import ListSource


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
