"""Check one database: what `etl verify DB` does for `etl imageset`'s LMDB, or for any Caffe Datum LMDB."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from turbojpeg import TurboJPEG

from etl.check import Checker, check_sum, check_sum_count, open_sums
from etl.datum import Datum, decode_datum
from etl.dbmean import RecordError, native_pixels, open_db, show_key
from etl.layout import CHECKPOINT_DIR, Layout, list_name, sums_name
from etl.progress import ProgressBar
from etl.words import plural

SPLIT = "train"  # etl imageset writes its one list as the train split
SUMS = f"{CHECKPOINT_DIR}/{sums_name(SPLIT)}"
LISTED = f"{CHECKPOINT_DIR}/{list_name(SPLIT)}"
LABEL = re.compile(rb"-?[0-9]+")


class Listed(NamedTuple):
    """A line of DB/.etl/train.txt: what was written, in order."""

    path: str
    label: int | None  # None: the line holds no number after its last space


class Expect(NamedTuple):
    """What etl imageset's report says every record holds; None where records may differ."""

    encoded: bool
    channels: int | None
    size: tuple[int, int] | None  # (height, width) when resized
    same_size: bool  # --check_size


class Seen:
    """What the walk over the records carries from one record to the next."""

    def __init__(self) -> None:
        self.line = -1  # the last key's list line
        self.prefix: str | None = None  # what .etl/train.txt puts before a key's path (ROOTFOLDER, or nothing)
        self.first_size: tuple[int, int] | None = None


def verify_db(db: Path, progress: bool = True) -> Checker:
    """Every record: a Datum whose image decodes as Caffe decodes it. For etl imageset's database also its
    key ('%08d_' line and path, in order), path and label against DB/.etl/train.txt, its checksum, its
    encoding, channels and size against the report."""
    check = Checker()
    layout = Layout(db, single_db=True)
    expect, written = _read_report(check, layout.report)
    listed = sums = None
    if expect is not None:
        listed = _open_listed(check, layout.list(SPLIT))
        sums = open_sums(check, layout.sums(SPLIT))
        check.notes += [f"no {name}: {what} not checked" for name, what, there in
                        ((LISTED, "paths and labels", listed), (SUMS, "record bytes", sums)) if there is None]
    try:
        with open_db(str(db)) as env:
            records = _check_records(check, env, db, listed, sums, expect, progress)
    finally:
        if listed is not None:
            listed.close()
    if expect is None:
        check.notes.append(f"no etl imageset report in {layout.report.parent}: checked that each record is a Datum "
                           "whose image decodes (keys, paths, labels and checksums need a database etl imageset "
                           "wrote)")
    else:
        _check_count(check, written, records)
        if sums is not None:
            check_sum_count(check, db.name, SUMS, sums, records)
    if records == 0:
        check.notes.append("the database holds no records")
    check.finish()
    return check


def _read_report(check: Checker, path: Path) -> tuple[Expect | None, int | None]:
    """What etl imageset's report says the records hold, and how many it wrote; (None, None) for a database
    without one."""
    if not path.is_file():
        return None, None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        settings = report["settings"]
        if not settings.get("caffe_imageset"):
            return None, None
        expect = Expect(encoded=settings["encoding"] != "none", channels=1 if settings["channels"] == 1 else None,
                        size=None if settings["keep_size"] else (int(settings["height"]), int(settings["width"])),
                        same_size=bool(settings.get("check_size")))
        return expect, report["splits"][SPLIT]["written"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        check.fail(f"cannot read {path}: {type(exc).__name__}: {exc} (not a report etl imageset wrote)")
        return None, None


def _open_listed(check: Checker, path: Path) -> IO[bytes] | None:
    if not path.is_file():
        return None
    try:
        return open(path, "rb")
    except OSError as exc:
        check.fail(f"cannot read {LISTED}: {exc}")
        return None


def _lines(listed: IO[bytes] | None) -> Iterator[Listed | None]:
    """.etl/train.txt's lines as written (ended by \\n only: a path may hold any other line break), then None."""
    if listed is not None:
        for raw in listed:
            path, _, label = raw.rstrip(b"\n").rpartition(b" ")
            yield Listed(path.decode("utf-8", "surrogateescape"), int(label) if LABEL.fullmatch(label) else None)
    while True:
        yield None


def _check_records(check: Checker, env: Any, db: Path, listed: IO[bytes] | None, sums: IO[bytes] | None,
                   expect: Expect | None, progress: bool) -> int:
    tj, seen, lines = TurboJPEG(), Seen(), _lines(listed)
    records = 0
    with env.begin() as txn:
        total = int(txn.stat()["entries"])
        try:
            for i, (key, value) in enumerate(ProgressBar(txn.cursor(), total=total, desc=f"verify {db.name}",
                                                         unit="rec", disable=not progress)):
                key, value = bytes(key), bytes(value)
                records = check.records = i + 1
                where = f"record {i} ({show_key(key)})"
                if sums is not None:
                    check_sum(check, db.name, SUMS, where, key, value, sums.readline())
                if expect is None:
                    _check_image(check, where, value, tj)
                else:
                    entry = next(lines)
                    if listed is not None and entry is None:
                        check.fail_each("records missing from train.txt", f"{where}: {LISTED} has no line for it")
                    _check_imageset_record(check, where, key, value, tj, expect, entry, seen)
        except Exception as exc:  # a damaged database shows up here: report, do not crash
            check.fail(f"{db.name}: reading stopped at record {records}: {exc}")
    if listed is not None and (extra := sum(1 for _ in listed)):
        check.fail(f"{LISTED} lists {plural(extra, 'more image')} than the database holds ({records})")
    return records


def _check_imageset_record(check: Checker, where: str, key: bytes, value: bytes, tj: TurboJPEG, expect: Expect,
                           entry: Listed | None, seen: Seen) -> None:
    _check_key(check, where, key, seen, entry)
    size = _check_caffe_record(check, where, value, tj, expect, entry)
    if size is None:
        return
    seen.first_size = seen.first_size or size
    if expect.same_size and size != seen.first_size:
        check.fail_each("records of another size", f"{where}: {size[0]}x{size[1]}, the first record is "
                        f"{seen.first_size[0]}x{seen.first_size[1]} (--check_size)")


def _check_image(check: Checker, where: str, value: bytes, tj: TurboJPEG) -> tuple[Datum, tuple[int, int, int]] | None:
    """The record's Datum and its image's (height, width, channels) as Caffe decodes it; None, the reason noted."""
    try:
        datum = decode_datum(value)
    except ValueError as exc:
        check.fail_each("records that are not Datums", f"{where}: not a Caffe Datum: {exc}")
        return None
    if not datum.encoded and not datum.data and datum.float_data:
        shape = _float_shape(check, where, datum)
        return (datum, shape) if shape is not None else None
    try:
        pixels = native_pixels(datum, tj)
    except RecordError as exc:
        check.fail_each("records that do not decode", f"{where}: {exc}")
        return None
    return datum, (pixels.shape[0], pixels.shape[1], pixels.shape[2])


def _float_shape(check: Checker, where: str, datum: Datum) -> tuple[int, int, int] | None:
    """A Datum of float pixels (Caffe allows them): its values must fill its size."""
    need = datum.channels * datum.height * datum.width
    if need <= 0 or len(datum.float_data) != need:
        check.fail_each("records that do not decode", f"{where}: holds {len(datum.float_data):,d} float values, "
                        f"where its size {datum.channels}x{datum.height}x{datum.width} needs {need:,d}")
        return None
    return datum.height, datum.width, datum.channels


def _check_key(check: Checker, where: str, key: bytes, seen: Seen, entry: Listed | None) -> None:
    """convert_imageset's key: the list line's number ('%08d', rising), '_', and the path as listed; .etl/train.txt
    holds the same path behind one prefix for the whole database (ROOTFOLDER, or nothing)."""
    number, underscore, raw = key.partition(b"_")
    if not (number.isdigit() and len(number) >= 8 and underscore and raw) or int(number) <= seen.line:
        check.fail_each("keys out of convert_imageset's form", f"{where}: not '%08d_PATH' with a line number above "
                        f"the previous record's ({seen.line})")
        return
    seen.line = int(number)
    if entry is None:
        return
    path = raw.decode("utf-8", "surrogateescape")
    if seen.prefix is None and entry.path.endswith(path):
        before = entry.path[:len(entry.path) - len(path)]
        seen.prefix = before if before in ("", "/") or before.endswith("/") else None
    if seen.prefix is None or entry.path != seen.prefix + path:
        check.fail_each("records whose path differs from train.txt", f"{where}: {LISTED} lists {entry.path!r}")


def _check_caffe_record(check: Checker, where: str, value: bytes, tj: TurboJPEG, expect: Expect,
                        entry: Listed | None) -> tuple[int, int] | None:
    got = _check_image(check, where, value, tj)
    if got is None:
        return None
    datum, shape = got
    if entry is not None and datum.label != entry.label:
        listed = "no label" if entry.label is None else f"label {entry.label}"
        check.fail_each("labels that differ from train.txt", f"{where}: label {datum.label}, {LISTED} has {listed}")
    if datum.encoded != expect.encoded:
        check.fail_each("records of the wrong encoding", f"{where}: encoded is {datum.encoded}, the database was "
                        f"written {'encoded' if expect.encoded else 'raw'}")
    # colour: a raw record has 3 channels; an encoded gray file is stored as it is and decodes to 1
    channels = expect.channels or (3 if not datum.encoded else shape[2])
    if shape[2] != channels:
        check.fail_each("records with other channels", f"{where}: {plural(shape[2], 'channel')}, {channels} expected")
    if expect.size is not None and shape[:2] != expect.size:
        check.fail_each("records of another size", f"{where}: {shape[0]}x{shape[1]}, resized to {expect.size[0]}x"
                        f"{expect.size[1]} expected")
    return shape[0], shape[1]


def _check_count(check: Checker, written: int | None, records: int) -> None:
    if written is not None and written != records:
        check.fail(f"the database holds {plural(records, 'record')}, report.json says {written} were written")
