"""Tar scan: walk a plain tar's headers with positioned reads, seeking over the data, to its members' places."""

from __future__ import annotations

import os
from operator import itemgetter
from typing import NamedTuple

import numpy as np

BLOCK = 512
REGULAR = (b"0", b"\0", b"7", b"")
LONG_NAME, PAX, PAX_GLOBAL = b"L", b"x", b"g"
LONG_LINK = b"K"  # GNU: the next entry's link target, too long for its header (no entry of its own)
HARD_LINK, SYMLINK = b"1", b"2"
LINKS = (HARD_LINK, SYMLINK)
DIRECTORY = b"5"
CHECK_EVERY = 4096  # headers whose checksums are verified together
# tar (GNU, BSD, Python's tarfile) ends an archive with two zero blocks, then pads it with zeros to a whole
# number of records, counted from the tar's start: 10 KiB records unless tar -b asks for others. More zeros
# than that after the end, or any data, is a hole: a partly downloaded or damaged file.
RECORD = 20 * BLOCK
END_BLOCKS = 2 * BLOCK
TAIL_SLACK = 1 << 20  # an all-zero file this small is taken for an empty tar (a larger record's padding)


class Header(tuple):
    """One tar entry: (name, type flag, offset of its data in the file, size). A tuple with named fields
    made by tuple's own constructor: a NamedTuple's costs 0.5 us more, once per image of a scan."""

    __slots__ = ()
    name: str = property(itemgetter(0))  # type: ignore[assignment]
    kind: bytes = property(itemgetter(1))  # type: ignore[assignment]
    offset: int = property(itemgetter(2))  # type: ignore[assignment]
    size: int = property(itemgetter(3))  # type: ignore[assignment]


class TarScan(NamedTuple):
    """A tar's entries in order, why the walk stopped early ('' when it reached the end), and the target of
    each hard link among the entries (by its position in entries), as the archive names it."""

    entries: list[Header]
    damage: str
    targets: dict[int, str]


def _octal(field_bytes: bytes) -> int:
    if field_bytes[:1] in (b"\x80", b"\xff"):  # GNU base-256, for sizes of 8 GiB and more
        value = int.from_bytes(field_bytes[1:], "big")
        return value - (1 << (8 * len(field_bytes) - 8)) if field_bytes[:1] == b"\xff" else value
    digits = field_bytes.strip(b" \0")
    return int(digits, 8) if digits else 0


def _name(header: bytes) -> bytes:
    name = header[:100].split(b"\0", 1)[0]
    if header[345] and header[257:263] == b"ustar\x00":  # POSIX ustar: a prefix before the name
        name = header[345:500].split(b"\0", 1)[0] + b"/" + name
    return name


def _pax_fields(data: bytes) -> dict[bytes, bytes] | None:
    """'<length> key=value\\n' records; None where they are damaged (the data of a header has no checksum:
    a record length or a size that is no number must not stop the scan with an exception)."""
    fields, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        if not data[pos:space].isdigit():
            return None
        length = int(data[pos:space])
        if length <= 0:
            break
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        fields[key] = value
        pos += length
    return None if not fields.get(b"size", b"0").isdigit() else fields


def _size(header: bytes) -> int:
    """The size field; -1 where it is no size (then the bytes are no header)."""
    try:
        size = int(header[124:135], 8)  # the common form: 11 octal digits, then NUL or space
    except ValueError:
        try:
            size = _octal(header[124:136])  # base-256 (sizes of 8 GiB and more), spaces
        except ValueError:
            return -1
    return max(size, -1)


def _checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 32 + sum(header[156:])


def looks_like_tar(fd: int, offset: int) -> bool:
    """Whether a tar header starts at this offset (its checksum holds)."""
    header = os.pread(fd, BLOCK, offset)
    if len(header) < BLOCK or header.count(0) == BLOCK:
        return False
    try:
        return _octal(header[148:156]) == _checksum(header)
    except ValueError:
        return False


class _Walk:
    """One walk over a tar's headers; checksums are verified in batches (one numpy sum for thousands of
    headers instead of a Python sum each, most of the cost of a scan) and the entries cut at a wrong one."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.start, self.pos, self.end = fd, start, start, end
        self.entries: list[Header] = []
        self.headers: list[bytes] = []  # waiting for their checksum check
        self.marks: list[tuple[int, int]] = []  # each waiting header's position, and the entries before it
        self.damage = ""
        self.targets: dict[int, str] = {}

    def run(self) -> TarScan:
        long_name, long_link, pax = b"", b"", {}
        fd, end, entries, pread = self.fd, self.end, self.entries, os.pread
        add_header, add_mark = self.headers.append, self.marks.append
        pos = self.pos
        while pos + BLOCK <= end:  # the loop runs once per member of ImageNet's 1.28 M: kept lean
            header = pread(fd, BLOCK, pos)
            if len(header) < BLOCK:
                self.damage = f"the file ends inside the tar header at byte {pos}"
                break
            if not header[0] and header.count(0) == BLOCK:
                self.damage = _after_end(fd, self.start, pos, end)  # the end-of-archive block, or a hole of zeros
                break
            size = _size(header)
            if size < 0:
                self.damage = f"a damaged tar header at byte {pos}"  # its size field is no number
                break
            add_header(header)
            add_mark((pos, len(entries)))
            kind, data = header[156:157], pos + BLOCK
            if kind == LONG_NAME:  # reads stay inside the range: a damaged size must not ask for gigabytes
                long_name = pread(fd, max(0, min(size, end - data)), data).split(b"\0", 1)[0]
            elif kind == PAX:
                pax = _pax_fields(pread(fd, max(0, min(size, end - data)), data))
                if pax is None:
                    self.damage = f"a damaged pax header at byte {pos}"
                    break
            elif kind == LONG_LINK:
                long_link = pread(fd, max(0, min(size, end - data)), data).split(b"\0", 1)[0]
            elif kind != PAX_GLOBAL:
                name = pax.get(b"path") or long_name or _name(header)
                size = int(pax[b"size"]) if pax and b"size" in pax else size
                entries.append(Header((name.decode("utf-8", "surrogateescape"), kind, data, size)))  # = os.fsdecode
                if kind == HARD_LINK:
                    target = pax.get(b"linkpath") or long_link or header[157:257].split(b"\0", 1)[0]
                    self.targets[len(entries) - 1] = target.decode("utf-8", "surrogateescape")
                long_name, long_link, pax = b"", b"", {}
            if data + size > end:
                self.damage = f"the file ends inside the data of {os.fsdecode(_name(header))!r}"
                break
            pos = data + (size + BLOCK - 1) // BLOCK * BLOCK
            if len(self.headers) >= CHECK_EVERY:
                self._verify()
        # A tar cut at a member boundary, without its end-of-archive blocks, is not flagged: GNU tar accepts
        # such tars, and --on-error fail would stop on inner tars written without them.
        if not self.damage and 0 < end - pos < BLOCK:  # the walk left less than a header: cut in one
            self.damage = f"the file ends inside the tar header at byte {pos}"
        self.pos = pos
        self._verify()
        targets = {at: target for at, target in self.targets.items() if at < len(entries)}  # cut with entries
        return TarScan(entries, self.damage, targets)

    def _verify(self) -> None:
        """Check the waiting headers' checksums together; cut the entries at the first wrong one."""
        if not self.headers:
            return
        blocks = np.frombuffer(b"".join(self.headers), np.uint8).reshape(-1, BLOCK)
        computed = blocks[:, :148].sum(axis=1, dtype=np.int64) + blocks[:, 156:].sum(axis=1, dtype=np.int64) + 256
        wrong = np.flatnonzero(computed != _stored_checksums(blocks))
        if wrong.size:
            pos, before = self.marks[int(wrong[0])]
            del self.entries[before:]
            self.damage = f"a damaged tar header at byte {pos}"
        self.headers.clear()
        self.marks.clear()


def padded_end(start: int, pos: int) -> int:
    """Where a tar that starts at start and whose end-of-archive blocks start at pos ends: after its two zero
    blocks and the zeros that fill its last 10 KiB record."""
    return start + -(-(pos - start + END_BLOCKS) // RECORD) * RECORD


def _after_end(fd: int, start: int, pos: int, end: int) -> str:
    """'' where the zero block at pos ends the tar: only zeros follow it, up to where tar's padding to a
    record would end the file. Otherwise why it is a hole instead (GNU tar stops there too, in silence, but a
    partly downloaded file is not whole)."""
    rest = end - pos - BLOCK
    where = f"zeros where a tar header should be at byte {pos}"
    if end > padded_end(start, pos):
        return (f"{where}, and {rest:,} bytes after them, more than the end blocks and padding of a tar: a partly "
                "downloaded or damaged file")
    tail = os.pread(fd, rest, pos + BLOCK)
    if tail.count(0) == len(tail):
        return ""
    data = pos + BLOCK + len(tail) - len(tail.lstrip(b"\0"))
    return f"{where}, then data again at byte {data}: a partly downloaded or damaged file"


def _stored_checksums(blocks: np.ndarray) -> np.ndarray:
    """The checksum fields of many headers: six octal digits then NUL and space (as tar writes them)
    parsed at once; a field in any other form parsed on its own (-1 where it is no number)."""
    digits = blocks[:, 148:154].astype(np.int64) - ord("0")
    stored = digits @ (8 ** np.arange(5, -1, -1, dtype=np.int64))
    common = ((digits >= 0) & (digits <= 7)).all(axis=1) & np.isin(blocks[:, 154], (0, 32))
    for k in np.flatnonzero(~common):
        try:
            stored[k] = _octal(blocks[k, 148:156].tobytes())
        except ValueError:
            stored[k] = -1
    return stored


def scan_tar(fd: int, start: int, end: int) -> TarScan:
    """The entries of the tar that fills bytes [start, end) of the file, in order. The walk stops at the
    end-of-archive block, or early where the file ends or a header is damaged (TarScan.damage says which);
    entries before that point are good. An entry whose data runs past the end is kept: it is marked by the
    damage, and reading it fails."""
    return _Walk(fd, start, end).run()
