"""Registry: the one list of input kinds, and the choice of the one that takes a given path."""

from __future__ import annotations

from typing import Protocol

from etl.settings import UsageError
from etl.sources.base import Source
from etl.sources.folder import FolderSource


class SourceKind(Protocol):
    def __call__(self, path: str) -> Source: ...

    @staticmethod
    def accepts(path: str) -> bool: ...


# A new input kind is a module in etl/sources/ and one line here; the first that accepts a path takes it.
SOURCES: list[SourceKind] = [
    FolderSource,
]


def open_source(path: str) -> Source:
    for kind in SOURCES:
        if kind.accepts(path):
            return kind(path)
    raise UsageError(f"not an input etl can read: {path}")
