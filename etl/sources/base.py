"""Sources' interface: what an input gives the planner (classes and their items) and each worker (a reader)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from etl.messages import Item
from etl.pagecache import InputSize


class Unreadable(Exception):
    """An item's bytes cannot be read; the message is the reason reported (skipped like a bad image)."""


class Reader(Protocol):
    """Item path -> bytes, in a worker. Picklable: built by the coordinator, sent to every worker."""

    def read(self, item: Item, charge: Callable[[int], None], drop_cache: bool) -> bytes:
        """The item's bytes; charge(size) before reading them (the throttle); Unreadable with the reason;
        drop_cache: leave nothing of a read-once item in the page cache."""
        ...

    def stamp(self, item: Item) -> int:
        """A cheap fingerprint of the item's content identity, without reading its bytes (a file's size, time
        and inode; an archive member's offset and size): a resume compares the committed items' stamps with
        those recorded when they were converted. An item that cannot be looked at has one fixed stamp."""
        ...

    def where(self, path: str) -> str:
        """The item's full location, as a user would name it (and as test faults match it)."""
        ...

    def fixable(self) -> bool:
        """Whether a bad item can be fixed where it is (a file), or not (a member of an archive)."""
        ...

    def list_prefix(self, relative: bool) -> str:
        """What goes before an item's path in train.txt/val.txt."""
        ...

    def input_size(self, sample: list[Item], count: int) -> InputSize:
        """Estimated bytes of `count` items, and how many of them are in the page cache, from a sample."""
        ...

    def device(self) -> str | None:
        """The block device the items are read from (for --adaptive-io), if there is one."""
        ...


class Source(Protocol):
    """An input that holds classes of images: a folder tree, a tar archive; list files beside them."""

    def classes(self) -> dict[str, list[str]]:
        """Class name -> item paths, classes and paths in byte order."""
        ...

    def images(self) -> list[str]:
        """Every image path in byte order, in class folders or not (a flat val set labelled by a file)."""
        ...

    def locate(self, path: str) -> tuple[int, int]:
        """Where an item's bytes lie in its archive, (offset, size); (-1, -1) for a file."""
        ...

    def reader(self) -> Reader:
        ...

    def save(self, folder: Path) -> None:
        """Keep in the checkpoint folder what a resumed run needs to skip the scan (an archive's index)."""
        ...

    def notes(self) -> list[str]:
        """What the scan found worth telling the user (after classes()), e.g. images under two labels."""
        ...


def byte_order(names: list[str]) -> list[str]:
    """Plain byte order of the file-system names, as DIGITS sorts classes."""
    return sorted(names, key=os.fsencode)


@dataclass
class Split:
    """One database to build: its name, the reader of its items, the items in write order."""

    name: str
    reader: Reader
    items: list[Item]
    give_up: dict[int, str] = field(default_factory=dict)  # items known bad at the plan: index -> reason

    def sample(self, count: int = 256) -> list[Item]:
        """Up to `count` of its items, evenly spread over the list (so over the classes)."""
        n, k = len(self.items), min(count, len(self.items))
        picks = sorted({round(j * (n - 1) / max(1, k - 1)) for j in range(k)})
        return [self.items[i] for i in picks]

    def input_size(self) -> InputSize:
        return self.reader.input_size(self.sample(), len(self.items))


@dataclass
class Plan:
    """The whole job: the label list and the splits, plus what was left out and why."""

    labels: list[str]
    splits: list[Split]
    notes: list[str] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
