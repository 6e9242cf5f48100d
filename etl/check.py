"""Check: what `etl verify` does: read every record of a dataset and check it against its own files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from array import array
from collections import Counter
from pathlib import Path
from typing import IO, Any

import numpy as np
from turbojpeg import TurboJPEG

from etl.aspect import VARIABLE_MODES
from etl.checkpoint import SUMS_SINCE, Checkpoint, release_tuple
from etl.datum import Datum, decode_blobproto, decode_datum
from etl.errors import UsageError
from etl.layout import (
    LABELS,
    MEAN_JPG,
    MEAN_PROTO,
    REPORT,
    SPLITS,
    Layout,
    db_name,
    db_path,
    list_path,
    sums_name,
    sums_path,
)
from etl.progress import ProgressBar
from etl.reader import SHARD_MANIFEST, LmdbDataset, datum_pixels
from etl.sinks.checksums import record_sum
from etl.words import plural

MAX_LISTED = 20  # problems shown; and kept per kind of per-record problem (the rest are counted)


class Checker:
    """Collects problems instead of stopping at the first one; notes say what could not be checked."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.records = 0
        self.found = 0  # problems found, listed or not
        self.per_kind: Counter[str] = Counter()

    def fail(self, message: str) -> None:
        self.found += 1
        self.problems.append(message)

    def fail_each(self, kind: str, message: str) -> None:
        """A problem that can repeat for every record: the first MAX_LISTED of a kind are listed, the rest
        counted (a sidecar of another dataset must not fill the memory with messages)."""
        self.found += 1
        self.per_kind[kind] += 1
        if self.per_kind[kind] <= MAX_LISTED:
            self.problems.append(message)

    def finish(self) -> None:
        for kind, n in self.per_kind.items():
            if n > MAX_LISTED:
                self.problems.append(f"... and {n - MAX_LISTED:,d} more {kind}")
        self.per_kind.clear()


def verify(out_dir: str, progress: bool = True) -> Checker:
    """A dataset folder whole; one split of it (OUT/train_db, sharded or not); or one LMDB (etl imageset's,
    Caffe's, DIGITS')."""
    out = Path(out_dir)
    split = split_of(out)
    if split is not None:
        return verify_dataset(out.resolve().parent, progress, only=split)
    if (out / "data.mdb").exists():
        from etl.checkdb import verify_db  # one database: etl imageset's, Caffe's, DIGITS'

        if split_of(out.parent) is not None:
            return verify_shard(out, progress)
        return verify_db(out, progress)
    return verify_dataset(out, progress)


def verify_shard(shard: Path, progress: bool) -> Checker:
    """One shard of a sharded split, as one LMDB: each record a Datum whose image decodes; the split's folder
    is what is checked with its checksums, list and labels."""
    from etl.checkdb import verify_db
    from etl.merge import one_shard_note, shard_entries

    shard_entries(shard, shard.parent.parent)  # a cut data.mdb: one line, with what makes the shard whole again
    check = verify_db(shard, progress)
    check.notes = [note for note in check.notes if not note.startswith("no etl imageset report")]
    check.notes.append(one_shard_note(shard, "verify", "checks the whole split, with its checksums, list and labels"))
    return check


def split_of(folder: Path) -> str | None:
    """The split whose database (or folder of shards) `folder` is, inside an etl dataset; None otherwise."""
    dataset = folder.resolve().parent
    if not ((dataset / REPORT).is_file() and (dataset / LABELS).is_file()):
        return None
    if not ((folder / "data.mdb").exists() or (folder / SHARD_MANIFEST).is_file()):
        return None
    return next((s for s in SPLITS if folder.resolve().name == db_name(s)), None)


def verify_dataset(out: Path, progress: bool, only: str | None = None) -> Checker:
    """Every split of the dataset (only: that one), its lists, labels and mean."""
    check = Checker()
    dataset = read_dataset(check, out)
    if dataset is None:
        return check
    report, labels = dataset
    splits = {name: split for name, split in report["splits"].items() if only in (None, name)}
    if only is not None and not splits:
        check.fail(f"{REPORT} has no {only} split, though {db_name(only)} is there")
    if len(labels) != report.get("labels"):
        check.fail(f"labels.txt has {plural(len(labels), 'class')}, report.json says {report.get('labels')}")
    unsummed = [sums_name(name) for name in splits
                if not sums_path(out, name).is_file() and not _sharded(out, name)]
    for name, split in splits.items():
        _check_split(check, out, name, split, labels, report["settings"], progress)
    if "train" in splits:
        _check_mean(check, out, report["settings"])
    if unsummed:
        _no_sums(check, out, unsummed)
    check.finish()
    return check


def _no_sums(check: Checker, out: Path, unsummed: list[str]) -> None:
    """Missing checksum sidecars: expected of a dataset etl 0.3.0 or earlier wrote (a note); a problem when the
    etl that started the job (.etl/job.json) writes them, since then they were lost."""
    missing = ", ".join(unsummed)
    version = Checkpoint(out).started_by()  # None: a copy without .etl/ (verify does not need it)
    if version is not None and release_tuple(version) >= SUMS_SINCE:
        check.fail(f"no {missing}, though etl {version}, which wrote this dataset, writes it: its records cannot be "
                   "checked against their checksums; restore it from a copy of the dataset, or convert again with "
                   "--overwrite")
        return
    check.notes.append(f"records could not be checked against checksums: no {missing} (a dataset written by etl "
                       "0.3.0 or earlier)")


SETTINGS_READ = {"height": int, "width": int, "channels": int, "encoding": str}


def read_dataset(check: Checker, out: Path) -> tuple[dict[str, Any], list[str]] | None:
    """report.json and labels.txt, each of the shape verify reads; None, the problem noted, when one is not."""
    try:
        text = (out / LABELS).read_bytes()
        report = json.loads((out / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        check.fail(f"cannot read report.json or labels.txt: {exc}")
        return None
    problem = _report_problem(report)
    if problem:
        check.fail(f"{out / REPORT} is damaged ({problem}): the dataset cannot be checked against it; {_again(out)}: "
                   f"it writes {REPORT} again")
        return None
    _check_labels_file(check, out, text, report.get("labels_sha256"))
    return report, text.decode("utf-8", "surrogateescape").splitlines()


def _again(out: Path) -> str:
    return f"run the etl convert command that wrote {out} again, with --resume"


def _check_labels_file(check: Checker, out: Path, text: bytes, written: Any) -> None:
    """labels.txt against the sha256 report.json keeps of the one the run wrote: two lines swapped pass every
    count, and a list input's paths name no class to cross-check them with. An older etl's report has none."""
    if isinstance(written, str) and hashlib.sha256(text).hexdigest() != written:
        check.fail(f"{out / LABELS} is not the file the conversion wrote (its sha256 is not report.json's "
                   f"labels_sha256): lines were changed, swapped, added or removed since, and records would get "
                   f"other classes' names; restore it from a copy of the dataset, or {_again(out)}: it writes "
                   f"{LABELS} again")


def _report_problem(report: Any) -> str:
    if not isinstance(report, dict):
        return f"a JSON {type(report).__name__}, not an object"
    settings, splits = report.get("settings"), report.get("splits")
    if not isinstance(settings, dict) or not all(isinstance(settings.get(k), t) for k, t in SETTINGS_READ.items()):
        return "its settings lack the image size, channels or encoding"
    if not isinstance(splits, dict) or not all(
            isinstance(split, dict) and type(split.get("written")) is int and isinstance(split.get("per_class"), dict)
            for split in splits.values()):
        return "its splits lack their written or per_class counts"
    return ""


def _check_split(check: Checker, out: Path, name: str, split: dict[str, Any], labels: list[str],
                 settings: dict[str, Any], progress: bool) -> None:
    from etl.merge import shards_inside, unfinished

    if not (db_path(out, name) / "data.mdb").is_file() and shards_inside(db_path(out, name)) \
            and not _sharded(out, name):  # shards without their manifest: the split, not a shard, is asked about
        check.fail(unfinished(db_path(out, name), out))
        return
    try:
        if _sharded(out, name):
            from etl.merge import SplitPaths, check_shards  # the manifest and its shards, as etl merge checks them

            check_shards(SplitPaths(out, name))
        db = LmdbDataset(db_path(out, name))
        count = len(db)
    except UsageError as exc:  # a damaged manifest: its message says which and what to do
        check.fail(str(exc))
        return
    except Exception as exc:  # any failure to open is the finding itself
        check.fail(f"{db_name(name)} cannot be opened: {exc}")
        return
    if count != split["written"]:
        check.fail(f"{db_name(name)} holds {count} records, report.json says {split['written']} were written")
    sharded = _sharded(out, name)
    sums = _shard_sums(check, out, name) if sharded else open_sums(check, sums_path(out, name))
    record_labels = array("q")
    tj = TurboJPEG()
    try:
        with warnings.catch_warnings(record=True) as caught:  # libjpeg's warnings come as Python warnings
            warnings.simplefilter("always")
            for i, (key, value) in enumerate(ProgressBar(db.raw_items(), total=count, desc=f"verify {name}",
                                                         unit="rec", disable=not progress)):
                check.records += 1
                where = f"{db_name(name)} record {i} ({key.decode(errors='replace')})"
                if sums is not None:
                    check_sum(check, db_name(name), sums_name(name), where, key, value, sums.readline())
                datum = _check_record(check, where, i, key, value, tj, caught, len(labels), settings, sharded)
                record_labels.append(datum.label if datum is not None else -1)
    except Exception as exc:  # a damaged database shows up here: report, do not crash
        check.fail(f"{db_name(name)}: reading stopped at record {check.records}: {exc}")
    if sums is not None:
        check_sum_count(check, db_name(name), sums_name(name), sums, count)
    counts = Counter(label for label in record_labels if label >= 0)
    expected = {labels.index(c): n for c, n in split["per_class"].items() if n and c in labels}
    if dict(counts) != expected:
        check.fail(f"{db_name(name)}: records per class differ from report.json")
    lines = _check_list(check, list_path(out, name), record_labels, len(labels))
    if _paths_may_name_classes(name, labels, settings):
        check_classes(check, list_path(out, name).name, lines, labels)


def _sharded(out: Path, name: str) -> bool:
    return (db_path(out, name) / SHARD_MANIFEST).is_file()


def _shard_sums(check: Checker, out: Path, name: str) -> IO[bytes] | None:
    """A sharded split's checksum lines: each shard keeps its own, in its .etl/; joined in write order. None,
    the shard named, when one has none (every shard etl writes has them)."""
    from etl.merge import shard_folders

    lines = []
    for folder in shard_folders(db_path(out, name)):
        path = Layout(folder, single_db=True).sums(name)
        try:
            lines.append(path.read_bytes())
        except OSError as exc:
            check.fail(f"cannot read {path} ({exc.strerror}): the records of {db_name(name)} were not checked against "
                       "their checksums")
            return None
    return io.BytesIO(b"".join(lines))


def open_sums(check: Checker, path: Path) -> IO[bytes] | None:
    if not path.is_file():
        return None  # verify() notes it: written by an etl before checksums
    try:
        return open(path, "rb")
    except OSError as exc:
        check.fail(f"cannot read {path.name}: {exc}")
        return None


def check_sum(check: Checker, db: str, sums: str, where: str, key: bytes, value: bytes, line: bytes) -> None:
    """The record's bytes against its line in the sidecar `sums` of database `db`, written when it was converted."""
    if not line.endswith(b"\n"):
        return  # the file ended: check_sum_count says how short it is
    sums_key, _, digest = line.rstrip(b"\n").rpartition(b" ")  # a caffe key holds its path, spaces and all
    kind = f"{db} records that {sums} disagrees with"
    if sums_key != key:
        check.fail_each(kind, f"{where}: its line in {sums} is for {sums_key.decode(errors='replace')!r}")
    elif digest != (actual := record_sum(value)):
        check.fail_each(kind, f"{where}: its bytes changed since it was written (crc32 {actual.decode()}, "
                              f"{sums} says {digest.decode(errors='replace')})")


def check_sum_count(check: Checker, db: str, sums_label: str, sums: IO[bytes], records: int) -> None:
    sums.seek(0)
    lines = sum(1 for _ in sums)
    sums.close()
    if lines != records:
        check.fail(f"{sums_label} has {lines} lines, {db} {records} records")


def _check_record(check: Checker, where: str, i: int, key: bytes, value: bytes, tj: TurboJPEG,
                  caught: list[warnings.WarningMessage], n_labels: int, settings: dict[str, Any],
                  sharded: bool = False) -> Datum | None:
    try:
        datum = decode_datum(value)
    except Exception as exc:  # not a Datum at all
        check.fail(f"{where}: not a Caffe Datum: {exc}")
        return None
    if not _key_fits(key, i, datum.label, sharded):
        check.fail(f"{where}: key does not match its index and label {datum.label}")
    if not 0 <= datum.label < n_labels:
        check.fail(f"{where}: label {datum.label} is not in labels.txt")
    shape = (datum.height, datum.width, settings["channels"])
    expected = _expected_size(settings, datum.height, datum.width)
    if expected or datum.channels != settings["channels"]:
        check.fail(f"{where}: Datum says {datum.height}x{datum.width}x{datum.channels}, expected "
                   f"{expected or shape}")
    if datum.encoded != (settings["encoding"] != "none"):
        check.fail(f"{where}: encoded flag is {datum.encoded}, encoding is {settings['encoding']}")
    caught.clear()
    try:
        pixels = datum_pixels(datum, tj)
    except Exception as exc:
        check.fail(f"{where}: image does not decode: {exc}")
        return datum
    if caught:  # an image etl encoded decodes cleanly: a warning means damage
        source = "libjpeg" if datum.data[:2] == b"\xff\xd8" else "the decoder"
        check.fail(f"{where}: the image is damaged: {source} warns '{caught[0].message}' decoding it")
    if pixels.shape != shape:
        check.fail(f"{where}: image decodes to {pixels.shape}, expected {shape}")
    return datum


def _expected_size(settings: dict[str, Any], height: int, width: int) -> str | None:
    """What the settings say a record's height x width must be, where this one is not; None where it fits."""
    mode, size = settings.get("resize_mode"), settings.get("size")
    if mode == "shorter":
        return None if min(height, width) == size else f"its shorter side {size} (--resize-mode shorter)"
    if mode == "longer":
        return None if max(height, width) <= size else f"its longer side at most {size} (--resize-mode longer)"
    fixed = (settings["height"], settings["width"], settings["channels"])
    return None if (height, width) == fixed[:2] else str(fixed)


def _key_fits(key: bytes, i: int, label: int, sharded: bool) -> bool:
    """'%08d_%d' % (record number, label); in a shard the number is the image's place in the write order,
    which skipped images leave unused: never below the record's."""
    if not sharded:
        return key == b"%08d_%d" % (i, label)
    number, _, tail = key.partition(b"_")
    return number.isdigit() and len(number) >= 8 and int(number) >= i and tail == b"%d" % label


def _check_list(check: Checker, path: Path, record_labels: array, n_labels: int) -> list[str]:
    """Line i of the list file names record i's image and label; the lines."""
    try:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError as exc:
        check.fail(f"cannot read {path.name}: {exc}")
        return []
    if len(lines) != len(record_labels):
        check.fail(f"{path.name} has {len(lines)} lines, the database {len(record_labels)} records")
    bad = [ln for ln in lines if not ln.rsplit(" ", 1)[-1].isdigit() or int(ln.rsplit(" ", 1)[-1]) >= n_labels]
    if bad:
        check.fail(f"{path.name}: {len(bad)} lines without a valid label, e.g. {bad[0]!r}")
    kind = f"{path.name} lines whose label is not their record's"
    for i, (line, label) in enumerate(zip(lines, record_labels, strict=False)):
        listed = line.rsplit(" ", 1)[-1]
        if label >= 0 and listed.isdigit() and int(listed) != label:
            check.fail_each(kind, f"{path.name} line {i + 1} says label {listed}, but record {i} "
                                  f"({i:08d}_{label}) has label {label}")
    return lines


def _paths_may_name_classes(split: str, labels: list[str], settings: dict[str, Any]) -> bool:
    """Whether a split's source paths can name their classes: a class folder or class tar (a folder or an
    archive input). Not a list file's paths (its labels are its own: --labels names them, or labels.txt holds
    the numbers), nor a flat val set labelled by --val-labels."""
    if settings.get("labels") or settings.get("caffe_imageset") or labels == [str(n) for n in range(len(labels))]:
        return False
    return not (split == "val" and settings.get("val_labels"))


def check_classes(check: Checker, list_name: str, lines: list[str], labels: list[str]) -> None:
    """Each record's class as labels.txt names it against the class its source path names: the first folder
    (or `<class>.tar`) under the input every path shares. Two swapped lines of labels.txt pass every count
    when the two classes have as many images, and mislabel every record of both. Says nothing when the paths
    do not all name a class of labels.txt (then they are not a class tree's)."""
    pairs = [line.rsplit(" ", 1) for line in lines]
    if len(pairs) < 2 or any(len(p) != 2 or not p[1].isdigit() or int(p[1]) >= len(labels) for p in pairs):
        return  # _check_list has said what is wrong with the lines
    named = _classes_named(pairs, set(labels))
    if named is None:
        return
    kind = f"{list_name} lines whose label's class in {LABELS} is not the class their path names"
    for i, ((_, label), name) in enumerate(zip(pairs, named, strict=True)):
        if labels[int(label)] != name:
            check.fail_each(kind, f"{list_name} line {i + 1}: label {label} is '{labels[int(label)]}' in "
                                  f"{LABELS}, but its path is in class '{name}'")


def _classes_named(pairs: list[list[str]], classes: set[str]) -> list[str] | None:
    """The class each path names (the first component under the paths' common folder, a trailing .tar taken
    off), or None when one of them names no class of labels.txt, or all are in one class folder."""
    paths = [path for path, _ in pairs]
    root = os.path.commonprefix(paths)
    root = root[:root.rfind("/") + 1]
    named = []
    for path in paths:
        first = path[len(root):].split("/", 1)[0]
        name = first if first in classes else first.removesuffix(".tar")
        if name not in classes or "/" not in path[len(root):]:
            return None
        named.append(name)
    return named


def _check_mean(check: Checker, out: Path, settings: dict[str, Any]) -> None:
    if settings.get("resize_mode") in VARIABLE_MODES:  # records of many sizes: no mean image is made
        if (out / MEAN_PROTO).exists():
            check.fail(f"{MEAN_PROTO} is there, though --resize-mode {settings['resize_mode']} makes no mean image")
        return
    try:
        mean = decode_blobproto((out / MEAN_PROTO).read_bytes())
    except (OSError, ValueError) as exc:
        check.fail(f"{MEAN_PROTO} is not a valid BlobProto: {exc}")
        return
    expected = (settings["channels"], settings["height"], settings["width"])
    if mean.shape != expected:
        check.fail(f"{MEAN_PROTO} has shape {mean.shape}, expected {expected}")
    finite = np.isfinite(mean)
    if not finite.all():
        check.fail(f"{MEAN_PROTO}: {_of_its_values(int((~finite).sum()))} NaN or infinite")
    outside = finite & ((mean < 0) | (mean > 255))
    if outside.any():
        check.fail(f"{MEAN_PROTO}: {_of_its_values(int(outside.sum()))} outside 0..255, e.g. {mean[outside][0]:g}")
    if not (out / MEAN_JPG).is_file():
        check.fail(f"{MEAN_JPG} is missing")


def _of_its_values(n: int) -> str:
    return f"{n:,d} of its values {'is' if n == 1 else 'are'}"


def render(check: Checker) -> str:
    notes = "".join(f"\n  note: {n}" for n in check.notes)
    if not check.problems:
        return f"etl verify: OK, {plural(check.records, 'record')} checked{notes}"
    shown = "\n".join(f"  - {p}" for p in check.problems[:MAX_LISTED])
    more = len(check.problems) - MAX_LISTED
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return (f"etl verify: FAILED, {plural(check.found, 'problem')} in {plural(check.records, 'record')}\n"
            f"{shown}{tail}{notes}")
