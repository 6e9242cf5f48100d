"""Check one database: what `etl verify DB` does for `etl imageset`'s LMDB, or for any Caffe Datum LMDB."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, NamedTuple

from tqdm import tqdm
from turbojpeg import TurboJPEG

from etl.check import Checker, check_sum, check_sum_count, open_sums
from etl.datum import decode_datum
from etl.dbmean import RecordError, open_db, record_pixels, show_key
from etl.layout import CHECKPOINT_DIR, Layout, sums_name
from etl.words import plural

SPLIT = "train"  # etl imageset writes its one list as the train split
SUMS = f"{CHECKPOINT_DIR}/{sums_name(SPLIT)}"


class Listed(NamedTuple):
    """A line of DB/.etl/train.txt: what was written, in order."""

    path: str
    label: int


class Expect(NamedTuple):
    """What etl imageset's report says every record holds; None where records may differ."""

    encoded: bool
    channels: int | None
    size: tuple[int, int] | None  # (height, width) when resized
    same_size: bool  # --check_size


def verify_db(db: Path, progress: bool = True) -> Checker:
    """Every record: a Datum whose image decodes as Caffe decodes it. For etl imageset's database also its
    key ('%08d_' line and path, in order), label and path against DB/.etl/train.txt, its checksum, its
    encoding, channels and size against the report."""
    check = Checker()
    layout = Layout(db, single_db=True)
    report = _report(check, layout.report)
    listed = _listed(layout.list(SPLIT)) if report is not None else None
    sums = open_sums(check, layout.sums(SPLIT)) if report is not None else None
    expect = _expect(report["settings"]) if report is not None else None
    env = open_db(str(db))
    try:
        records = _check_records(check, env, db, listed, sums, expect, progress)
    finally:
        env.close()
    if report is None:
        check.notes.append(f"no etl report in {layout.report.parent}: checked that each record is a Datum whose "
                           "image decodes (keys, labels and checksums need a database etl imageset wrote)")
    else:
        _check_counts(check, report, listed, records)
        if sums is not None:
            check_sum_count(check, db.name, SUMS, sums, records)
    check.finish()
    return check


def _report(check: Checker, path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        return report if report.get("settings", {}).get("caffe_imageset") else None
    except (OSError, ValueError) as exc:
        check.fail(f"cannot read {path}: {exc}")
        return None


def _listed(path: Path) -> list[Listed] | None:
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    out = []
    for line in lines:
        where, _, label = line.rpartition(" ")
        out.append(Listed(where, int(label) if label.lstrip("-").isdigit() else -1))
    return out


def _expect(settings: dict[str, Any]) -> Expect:
    return Expect(encoded=settings["encoding"] != "none", channels=1 if settings["channels"] == 1 else None,
                  size=None if settings.get("keep_size") else (settings["height"], settings["width"]),
                  same_size=bool(settings.get("check_size")))


def _check_records(check: Checker, env: Any, db: Path, listed: list[Listed] | None, sums: IO[bytes] | None,
                   expect: Expect | None, progress: bool) -> int:
    tj = TurboJPEG()
    last_line, first_size, records = -1, None, 0
    with env.begin() as txn:
        total = int(txn.stat()["entries"])
        try:
            for i, (key, value) in enumerate(tqdm(txn.cursor(), total=total, desc=f"verify {db.name}", unit="rec",
                                                  disable=not progress)):
                records = check.records = i + 1
                where = f"record {i} ({show_key(bytes(key))})"
                if sums is not None:
                    check_sum(check, db.name, SUMS, where, bytes(key), bytes(value), sums.readline())
                if expect is None:
                    _check_image(check, where, bytes(value), tj)
                    continue
                entry = listed[i] if listed is not None and i < len(listed) else None
                last_line = _check_key(check, where, bytes(key), last_line, entry)
                size = _check_caffe_record(check, where, bytes(value), tj, expect, entry)
                first_size = first_size or size
                if expect.same_size and size is not None and size != first_size:
                    check.fail_each("records of another size", f"{where}: {size[0]}x{size[1]}, the first record is "
                                    f"{first_size[0]}x{first_size[1]} (--check_size)")
        except Exception as exc:  # a damaged database shows up here: report, do not crash
            check.fail(f"{db.name}: reading stopped at record {records}: {exc}")
    return records


def _check_image(check: Checker, where: str, value: bytes, tj: TurboJPEG) -> tuple[int, int, int] | None:
    """The record's image (height, width, channels) as Caffe decodes it, or None with the reason noted."""
    try:
        pixels = record_pixels(value, tj)
    except RecordError as exc:
        check.fail_each("records that do not decode", f"{where}: {exc}")
        return None
    return pixels.shape[0], pixels.shape[1], pixels.shape[2]


def _check_key(check: Checker, where: str, key: bytes, last_line: int, entry: Listed | None) -> int:
    """convert_imageset's key: the list line's number ('%08d', rising) and the path as listed."""
    number, _, path = key.partition(b"_")
    if not (number.isdigit() and len(number) >= 8) or int(number) <= last_line:
        check.fail_each("keys out of convert_imageset's form", f"{where}: not '%08d_PATH' with a line number above "
                        f"the previous record's ({last_line})")
        return last_line
    if entry is not None and not entry.path.endswith(path.decode("utf-8", errors="surrogateescape")):
        check.fail_each("records whose path differs from train.txt", f"{where}: .etl/train.txt lists {entry.path}")
    return int(number)


def _check_caffe_record(check: Checker, where: str, value: bytes, tj: TurboJPEG, expect: Expect,
                        entry: Listed | None) -> tuple[int, int] | None:
    try:
        datum = decode_datum(value)
    except ValueError as exc:
        check.fail_each("records that are not Datums", f"{where}: not a Caffe Datum: {exc}")
        return None
    if entry is not None and datum.label != entry.label:
        check.fail_each("labels that differ from train.txt", f"{where}: label {datum.label}, .etl/train.txt says "
                        f"{entry.label}")
    if datum.encoded != expect.encoded:
        check.fail_each("records of the wrong encoding", f"{where}: encoded is {datum.encoded}, the database was "
                        f"written {'encoded' if expect.encoded else 'raw'}")
    shape = _check_image(check, where, value, tj)
    if shape is None:
        return None
    # colour: a raw record has 3 channels; an encoded gray file is stored as it is and decodes to 1
    channels = expect.channels or (3 if not datum.encoded else shape[2])
    if shape[2] != channels:
        check.fail_each("records with other channels", f"{where}: {plural(shape[2], 'channel')}, {channels} expected")
    if expect.size is not None and shape[:2] != expect.size:
        check.fail_each("records of another size", f"{where}: {shape[0]}x{shape[1]}, resized to {expect.size[0]}x"
                        f"{expect.size[1]} expected")
    return shape[0], shape[1]


def _check_counts(check: Checker, report: dict[str, Any], listed: list[Listed] | None, records: int) -> None:
    written = report.get("splits", {}).get(SPLIT, {}).get("written")
    if written is not None and written != records:
        check.fail(f"the database holds {plural(records, 'record')}, report.json says {written} were written")
    if listed is not None and len(listed) != records:
        check.fail(f".etl/train.txt lists {plural(len(listed), 'image')}, the database holds {records}")
