"""List source: a text file of `path label` lines (Caffe's train.txt/val.txt, DIGITS' text-file mode)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from etl.errors import UsageError
from etl.messages import Item
from etl.sources.base import Unreadable
from etl.sources.folder import FileReader
from etl.words import plural

SNIFF_BYTES = 64 * 1024
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, which Windows editors put at a file's start
LABEL_MAX = 2**31 - 1  # a Datum's label is an int32
LABEL_AT_END = re.compile(r"^(.*?)[ \t]+(\S+)$")  # the label is the last token: paths may hold spaces
WNID_LINE = re.compile(r"^(n[0-9]{8})\s")  # synset_words.txt: 'n01440764 tench, Tinca tinca'


class Listed(list[tuple[str, int]]):
    """(path as listed, label) pairs in the list's order, with the line number of each; a blank line kept
    (convert_imageset counts it as a line) is ("", 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[int] = []


def _decode(raw: bytes) -> str:
    # Paths are file-system bytes, not necessarily UTF-8: keep them as Python keeps file names.
    return raw.decode("utf-8", "surrogateescape")


def parse_line(text: str) -> tuple[str, int] | str:
    """(path, label), or why the line is not one."""
    path, space, label = text.rpartition(" ")
    if space and label.isascii() and label.isdigit() and path.strip() and not path.endswith((" ", "\t")) \
            and int(label) <= LABEL_MAX:
        return path, int(label)  # the common line, without the regular expression (a list has a million)
    match = LABEL_AT_END.match(text.rstrip())
    if match is None or not match[1]:
        return "no label after the path (expected 'path label')"
    path, label = match[1], match[2]
    if not re.fullmatch(r"[+-]?[0-9]+", label):  # ASCII digits only: int() also reads '٣' as 3
        return f"the label '{label}' is not a whole number"
    if int(label) < 0:
        return f"the label {label} is negative"
    if int(label) > LABEL_MAX:
        return f"the label {label} is more than a Datum's label holds ({LABEL_MAX})"
    return path, int(label)


def _lines(path: str, what: str) -> list[bytes]:
    """The file's lines, without a byte-order mark, nor the empty one after the last line break."""
    try:
        with open(path, "rb") as fh:
            lines = fh.read().removeprefix(BOM).split(b"\n")
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    return lines[:-1] if lines and not lines[-1] else lines


def read_list(path: str, keep_blank: bool = False) -> Listed:
    """Every `path label` line of a list file; a bad line stops the run with its number. keep_blank: blank
    lines are kept, as ("", 0), for convert_imageset's numbering; otherwise they are skipped."""
    listed = Listed()
    lines = _decode(b"\n".join(_lines(path, "list"))).split("\n")  # one decode, not a million
    for number, line in enumerate(lines, 1):
        text = line.rstrip("\r")
        if not text.strip():
            if keep_blank:
                listed.append(("", 0))
                listed.lines.append(number)
            continue
        parsed = parse_line(text)
        if isinstance(parsed, str):
            raise UsageError(f"{path} line {number}: {parsed}: fix or remove the line")
        listed.append(parsed)
        listed.lines.append(number)
    if not any(p for p, _ in listed):
        raise UsageError(f"the list {path} has no 'path label' lines")
    return listed


def positions_by_label(pairs: list[tuple[str, int]]) -> dict[int, list[int]]:
    """Label -> the positions in `pairs` of its items, labels in ascending order, positions in list order."""
    by_label: dict[int, list[int]] = {}
    for position, (_, label) in enumerate(pairs):
        by_label.setdefault(label, []).append(position)
    return dict(sorted(by_label.items()))


def looks_like_list(path: str) -> bool:
    """A regular file whose first non-blank line is `path label` (a tar, an image or a labels file is not)."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError:
        return False
    if b"\0" in head:
        return False
    head = head.removeprefix(BOM)
    first = next((line for line in _decode(head).split("\n") if line.strip()), "")
    return not isinstance(parse_line(first.rstrip("\r")), str)


def read_label_names(path: str) -> list[str]:
    """Class names, line number = label: synsets.txt, synset_words.txt (its first token, the WNID), or DIGITS'
    labels.txt (the whole line, which may hold spaces)."""
    lines = [_decode(line).rstrip("\r").strip() for line in _lines(path, "labels file")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UsageError(f"the labels file {path} names no class")
    blank = next((n for n, line in enumerate(lines, 1) if not line), None)
    if blank is not None:
        raise UsageError(f"{path} line {blank} is blank: each line names the class of that label number (line 1 "
                         "is label 0), so a blank line would shift every later label")
    return [m[1] if (m := WNID_LINE.match(line + " ")) else line for line in lines]


def check_range(listed: Listed, where: str, count: int, labels_file: str) -> None:
    """A label the labels file has no line for stops the run, naming the line."""
    for (_, label), number in zip(listed, listed.lines, strict=True):
        if label >= count:
            raise UsageError(f"{where} line {number}: label {label} is outside {labels_file}, which names "
                             f"{plural(count, 'class', 'classes')} (labels 0 to {count - 1})")


def check_files(listed: Listed, where: str, reader: FileReader) -> None:
    """--strict-list: every listed file is there, before any work."""
    for (path, _), number in zip(listed, listed.lines, strict=True):
        if path and not os.path.isfile(reader.where(path)):
            raise UsageError(f"{where} line {number}: {reader.where(path)} is not a file (--strict-list): fix the "
                             "line, or leave out --strict-list to skip and report missing files")


@dataclass(frozen=True)
class ListReader(FileReader):
    """Reads a list's files under its root; absolute paths in the list are read as they are."""

    absolute: bool = False  # some listed paths are absolute: train.txt then keeps paths as listed

    def read(self, item: Item, charge: Callable[[int], None], drop_cache: bool) -> bytes:
        try:
            return super().read(item, charge, drop_cache)
        except Unreadable as exc:  # a listed file may never have been there: no scan saw it
            if "vanished since the scan" in str(exc):
                raise Unreadable("cannot read: no such file (listed, not found under the root)") from None
            raise

    def list_prefix(self, relative: bool) -> str:
        return "" if self.absolute else super().list_prefix(relative)


class ListSource:
    """A list file as input: its lines are the items in their order, labelled as the list says."""

    def __init__(self, path: str, progress: bool = False, saved: Path | None = None, root: str | None = None,
                 keep_blank: bool = False) -> None:
        self.path = path
        self.root = root if root is not None else os.path.dirname(os.path.abspath(path))
        self.listed = read_list(path, keep_blank)

    @staticmethod
    def accepts(path: str) -> bool:
        return looks_like_list(path)

    def pairs(self) -> Listed:
        return self.listed

    def classes(self) -> dict[str, list[str]]:
        """Label number (as text) -> paths, in label order: what a class-folder input would give."""
        return {str(label): [self.listed[p][0] for p in positions]
                for label, positions in positions_by_label(self.listed).items()}

    def images(self) -> list[str]:
        return [path for path, _ in self.listed]

    def locate(self, path: str) -> tuple[int, int]:
        return -1, -1

    def notes(self) -> list[str]:
        return []

    def save(self, folder: Path) -> None:
        """Nothing to keep: the list is read again, and its content is part of the job's identity."""

    def reader(self) -> ListReader:
        return ListReader(self.root, absolute=any(p[:1] == "/" for p, _ in self.listed))  # os.path.isabs, faster
