"""Check: what `etl verify` does: decode every record of a dataset and check it against its own files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm
from turbojpeg import TurboJPEG

from etl.datum import decode_blobproto
from etl.layout import LABELS, MEAN_JPG, MEAN_PROTO, REPORT, db_name, db_path, list_path
from etl.reader import LmdbDataset, datum_pixels

MAX_LISTED = 20


class Checker:
    """Collects problems instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.records = 0

    def fail(self, message: str) -> None:
        self.problems.append(message)


def verify(out_dir: str, progress: bool = True) -> Checker:
    check = Checker()
    out = Path(out_dir)
    try:
        report = json.loads((out / REPORT).read_text(encoding="utf-8"))
        labels = (out / LABELS).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except (OSError, ValueError) as exc:
        check.fail(f"cannot read report.json or labels.txt: {exc}")
        return check
    if len(labels) != report.get("labels"):
        check.fail(f"labels.txt has {len(labels)} classes, report.json says {report.get('labels')}")
    for name, split in report["splits"].items():
        _check_split(check, out, name, split, labels, report["settings"], progress)
    if "train" in report["splits"]:
        _check_mean(check, out, report["settings"])
    return check


def _check_split(check: Checker, out: Path, name: str, split: dict[str, Any], labels: list[str],
                 settings: dict[str, Any], progress: bool) -> None:
    try:
        db = LmdbDataset(db_path(out, name))
        count = len(db)
    except Exception as exc:  # any failure to open is the finding itself
        check.fail(f"{db_name(name)} cannot be opened: {exc}")
        return
    if count != split["written"]:
        check.fail(f"{db_name(name)} holds {count} records, report.json says {split['written']} were written")
    per_label: dict[int, int] = {}
    tj = TurboJPEG()
    try:
        for i, (key, datum) in enumerate(tqdm(db.items(), total=count, desc=f"verify {name}", unit="rec",
                                              disable=not progress)):
            check.records += 1
            _check_record(check, name, i, key, datum, tj, len(labels), settings)
            per_label[datum.label] = per_label.get(datum.label, 0) + 1
    except Exception as exc:  # a damaged database shows up here: report, do not crash
        check.fail(f"{db_name(name)}: reading stopped at record {check.records}: {exc}")
    expected = {labels.index(c): n for c, n in split["per_class"].items() if n and c in labels}
    if per_label != expected:
        check.fail(f"{db_name(name)}: records per class differ from report.json")
    _check_list(check, list_path(out, name), split["written"], len(labels))


def _check_record(check: Checker, name: str, i: int, key: bytes, datum: Any, tj: TurboJPEG,
                  n_labels: int, settings: dict[str, Any]) -> None:
    where = f"{db_name(name)} record {i} ({key.decode(errors='replace')})"
    if key != b"%08d_%d" % (i, datum.label):
        check.fail(f"{where}: key does not match its index and label {datum.label}")
    if not 0 <= datum.label < n_labels:
        check.fail(f"{where}: label {datum.label} is not in labels.txt")
    shape = (settings["height"], settings["width"], settings["channels"])
    if (datum.height, datum.width, datum.channels) != shape:
        check.fail(f"{where}: Datum says {datum.height}x{datum.width}x{datum.channels}, expected {shape}")
    if datum.encoded != (settings["encoding"] != "none"):
        check.fail(f"{where}: encoded flag is {datum.encoded}, encoding is {settings['encoding']}")
    try:
        pixels = datum_pixels(datum, tj)
    except Exception as exc:
        check.fail(f"{where}: image does not decode: {exc}")
        return
    if pixels.shape != shape:
        check.fail(f"{where}: image decodes to {pixels.shape}, expected {shape}")


def _check_list(check: Checker, path: Path, written: int, n_labels: int) -> None:
    try:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError as exc:
        check.fail(f"cannot read {path.name}: {exc}")
        return
    if len(lines) != written:
        check.fail(f"{path.name} has {len(lines)} lines, the database {written} records")
    bad = [ln for ln in lines if not ln.rsplit(" ", 1)[-1].isdigit() or int(ln.rsplit(" ", 1)[-1]) >= n_labels]
    if bad:
        check.fail(f"{path.name}: {len(bad)} lines without a valid label, e.g. {bad[0]!r}")


def _check_mean(check: Checker, out: Path, settings: dict[str, Any]) -> None:
    try:
        mean = decode_blobproto((out / MEAN_PROTO).read_bytes())
    except (OSError, ValueError) as exc:
        check.fail(f"{MEAN_PROTO} is not a valid BlobProto: {exc}")
        return
    expected = (settings["channels"], settings["height"], settings["width"])
    if mean.shape != expected:
        check.fail(f"{MEAN_PROTO} has shape {mean.shape}, expected {expected}")
    if not (out / MEAN_JPG).is_file():
        check.fail(f"{MEAN_JPG} is missing")


def render(check: Checker) -> str:
    if not check.problems:
        return f"etl verify: OK, {check.records:,d} records checked"
    shown = "\n".join(f"  - {p}" for p in check.problems[:MAX_LISTED])
    more = len(check.problems) - MAX_LISTED
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return f"etl verify: FAILED, {len(check.problems)} problems in {check.records:,d} records\n{shown}{tail}"
