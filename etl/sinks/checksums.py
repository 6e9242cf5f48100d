"""Checksum sink: the database sink plus its sidecar `<split>_db.sums`: a `<key> <crc32>` line per record."""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

from etl.errors import UsageError
from etl.messages import Record
from etl.sinks.lmdb import LmdbSink


def record_sum(value: bytes, crc: int = -1) -> bytes:
    """A record's checksum as the sidecar spells it: zlib's CRC-32 of the stored value, 8 lowercase hex digits
    (crc: the CRC-32 already computed, by the worker that made the record)."""
    return b"%08x" % (crc if crc >= 0 else zlib.crc32(value))


def cut_lines(path: Path, keep: int) -> int:
    """Cut the file back to at most `keep` whole lines (a line half-written when a run died goes too);
    returns how many it kept. A missing file is created empty."""
    with open(path, "ab+") as fh:
        fh.seek(0)
        offset = kept = 0
        while kept < keep:
            line = fh.readline()
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            kept += 1
        fh.truncate(offset)
    return kept


def lost_sums(path: Path, existed: bool, kept: int, records: int) -> str:
    """A resume's refusal of a sidecar that lost lines: summing the records again from the database would
    certify a record damaged since as good."""
    what = f"holds {kept} checksum lines" if existed else "is missing"
    return (f"--resume: {path} {what}, and its database has {records} committed records, each with its line when "
            "written (the file was cut, emptied or removed since): summing them again would certify a damaged "
            "record as good; convert again with --overwrite")


class ChecksumSink:
    """The database sink with a checksum line per record. The lines of a commit are written and fsynced
    before the database commits them; on opening, the sidecar is cut back to the database's record count,
    so after a crash at any point, and on resume, line i is record i's.
    owed: the committed records have their lines (the run was started by an etl that writes them), so fewer
    lines is damage; otherwise (an older etl's run) the records without one are summed from the database."""

    def __init__(self, db: LmdbSink, path: Path, owed: bool = True) -> None:
        self.db, self.path = db, path
        self.lines: list[bytes] = []
        existed, committed = path.exists(), db.records()
        kept = cut_lines(path, committed)
        if kept < committed and owed:
            db.close()
            raise UsageError(lost_sums(path, existed, kept, committed))
        self.file = open(path, "ab")
        if kept < committed:  # resuming a run an etl without checksums started: sum what it committed
            self._sum_committed(kept)

    def _sum_committed(self, start: int) -> None:
        with self.db.env.begin() as txn:
            for i, (key, value) in enumerate(txn.cursor()):
                if i >= start:
                    self.lines.append(b"%s %s\n" % (bytes(key), record_sum(value)))
        self._flush()

    @property
    def throttled_seconds(self) -> float:
        return self.db.throttled_seconds

    def records(self) -> int:
        return self.db.records()

    def add(self, records: Sequence[Record], first_index: int) -> None:
        self.db.add(records, first_index)
        self.lines.extend(b"%s %s\n" % (self.db.key(rec, first_index + i), record_sum(rec.value, rec.crc))
                          for i, rec in enumerate(records))

    def first_value(self) -> bytes | None:
        return self.db.first_value()

    @property
    def pending(self) -> int:
        return self.db.pending

    def _flush(self) -> None:
        self.file.writelines(self.lines)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.lines.clear()

    def commit(self, written: int) -> None:
        """The batch's lines on disk first, then the database's commit: every committed record has its line."""
        self._flush()
        self.db.commit(written)

    def release_pages(self) -> None:
        self.db.release_pages()

    def close(self) -> int:
        self.file.close()
        return self.db.close()
