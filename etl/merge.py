"""Merge: `etl merge OUT` joins a split's shard LMDBs into the one LMDB a one-machine run writes, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lmdb

from etl.errors import PipelineError, UsageError, write_failure
from etl.layout import CHECKPOINT_DIR, REPORT, SPLITS, db_name, db_path, sums_name, sums_path
from etl.messages import Record
from etl.outlock import exclusive
from etl.progress import ProgressBar
from etl.reader import DamagedDatabase, open_checked
from etl.runners.shards import DONE, FORMAT, MANIFEST
from etl.sinks.checksums import ChecksumSink, record_sum
from etl.sinks.lmdb import LmdbSink
from etl.words import plural

MB = 1 << 20


@dataclass(frozen=True)
class SplitPaths:
    """Every name a split's merge uses. The steps, each state they leave told apart on the next run (recover):
    build `<split>_db.merging` and `<split>_db.sums.merging`; move the shards aside, to `.shards` when kept,
    else `.shards.deleting`; move the sums, then the database, into place; delete `.shards.deleting`."""

    out: Path
    split: str

    @property
    def db(self) -> Path:
        return db_path(self.out, self.split)

    def beside(self, suffix: str) -> Path:
        return self.db.with_name(self.db.name + suffix)

    @property
    def shards(self) -> Path:
        return self.beside(".shards")

    @property
    def merging(self) -> Path:
        return self.beside(".merging")

    @property
    def deleting(self) -> Path:
        return self.beside(".shards.deleting")

    @property
    def sums(self) -> Path:
        return sums_path(self.out, self.split)

    @property
    def sums_merging(self) -> Path:
        return self.sums.with_name(self.sums.name + ".merging")


class MergeStats(NamedTuple):
    split: str
    records: int
    data_bytes: int
    seconds: float


def run_merge(out_dir: str, keep_shards: bool = False, progress: bool = True) -> list[MergeStats]:
    """Merge every sharded split of the dataset in OUT; a split merged already is left alone, with a note."""
    out, only = Path(out_dir), None
    if (split := _split_named(out)) is not None:  # OUT/<split>_db: that split of the dataset
        out, only = out.resolve().parent, split
    if not (out / REPORT).is_file():
        raise UsageError(f"{out} is not an etl dataset folder (no {REPORT}): give the folder etl convert wrote")
    done: list[MergeStats] = []
    with exclusive(out):
        paths = [SplitPaths(out, split) for split in SPLITS if only in (None, split)]
        for p in paths:
            recover(p)
        manifests = {p.split: check_split(p) for p in paths if (p.db / MANIFEST).is_file()}
        notes = [_merged_note(p) for p in paths if p.split not in manifests and p.db.is_dir()]
        if not manifests and not notes:
            raise UsageError(f"{out} holds no sharded split (no <split>_db/{MANIFEST}): nothing to merge")
        for p in paths:
            if p.split in manifests:
                done.append(merge_split(p, manifests[p.split], keep_shards, progress))
    if progress:
        for note in notes:
            print(f"etl merge: {note}")
        for st in done:
            print(summary_line(st))
    return done


def _split_named(folder: Path) -> str | None:
    """The split whose database folder (sharded or not) `folder` is, when its parent is an etl dataset."""
    name = folder.resolve().name
    inside = (folder / MANIFEST).is_file() or (folder / "data.mdb").is_file()
    if not inside or not (folder.resolve().parent / REPORT).is_file():
        return None
    return next((split for split in SPLITS if name == db_name(split)), None)


def reconvert(out: Path) -> str:
    """What makes a sharded split whole again: a resumed convert redoes each shard without its done marker, and
    writes the manifest last."""
    return f"run the etl convert command that wrote {out} again, with --resume"


def _merged_note(p: SplitPaths) -> str:
    """A split without a manifest: one database already, or shards whose conversion never finished."""
    if not (p.db / "data.mdb").is_file():
        raise UsageError(unfinished(p.db, p.out))
    kept = f"; its shards are kept in {p.shards.name}" if p.shards.is_dir() else ""
    return f"{p.db.name} is one database already (no {MANIFEST}): left alone{kept}"


def shards_inside(folder: Path) -> list[str]:
    """The names of the LMDB folders inside `folder` (a split's folder of shards), sorted."""
    return sorted(d.name for d in folder.iterdir() if (d / "data.mdb").is_file()) if folder.is_dir() else []


def unfinished(folder: Path, out: Path) -> str:
    """What a split's folder without a database nor a manifest is told: a sharded conversion that did not finish
    (the manifest is written last), to be resumed; never which shard to use instead."""
    shards = shards_inside(folder)
    what = f"shards ({', '.join(shards[:3])}{', ...' if len(shards) > 3 else ''})" if shards else "no database"
    return (f"{folder} holds {what} but no {MANIFEST}, which etl convert writes last: its conversion did not finish "
            f"(or the manifest was removed); {reconvert(out)}")


def summary_line(st: MergeStats) -> str:
    mb = st.data_bytes / MB
    rate = mb / st.seconds if st.seconds > 0 else 0.0
    return (f"etl merge: {st.split}: {plural(st.records, 'record')}, {mb:,.1f} MB in {st.seconds:.1f} s "
            f"({rate:,.1f} MB/s)")


def recover(p: SplitPaths) -> None:
    """Finish or undo what a merge killed part-way left, so that the split is either sharded or merged."""
    aside = p.shards if p.shards.is_dir() else p.deleting
    if p.db.exists():
        shutil.rmtree(p.deleting, ignore_errors=True)  # killed while deleting shards it had replaced already
    elif p.merging.is_dir() and aside.is_dir():  # killed between the renames: the build was complete by then
        _finish_swap(p, aside)
    elif (aside / MANIFEST).is_file():  # the shards aside with nothing to replace them: put them back
        os.rename(aside, p.db)
        _sync_dir(p.out)


def check_split(p: SplitPaths) -> dict[str, Any]:
    """check_shards, and nothing in the way of the merge."""
    man = check_shards(p)
    if p.shards.exists():
        raise UsageError(f"{p.shards} is in the way (shards kept by an earlier merge?): move it away or remove it")
    return man


def check_shards(p: SplitPaths) -> dict[str, Any]:
    """The manifest, checked against the shard folders; every shard must be whole, finished and checksummed
    (etl merge before it merges, etl verify as its first finding)."""
    man = read_manifest(p)
    for s in man["shards"]:
        check_shard(p, s)
    return man


def one_shard_note(shard: Path, command: str, covers: str) -> str:
    """What a tool given one shard of a sharded split notes: the split holds the dataset's records, and the same
    command on it covers them all (covers: what it does then)."""
    return f"{shard} is one shard of {shard.parent}: etl {command} {shard.parent} {covers}"


def read_manifest(p: SplitPaths) -> dict[str, Any]:
    """`<split>_db/manifest.json`, every field merge uses of the type it needs; a damaged one is one line."""
    return load_manifest(p.db, p.split, p.out)


def load_manifest(folder: Path, split: str | None, out: Path) -> dict[str, Any]:
    """A sharded split's manifest (etl merge, mean and verify read it), checked; a damaged one is one line naming
    it and what writes it again. split: the split it must be of (None: any)."""
    where = folder / MANIFEST
    try:
        man = json.loads(where.read_text(encoding="utf-8"))
        problem = _manifest_problem(man, split or (man.get("split") if isinstance(man, dict) else None))
    except (OSError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        raise UsageError(f"{where} is damaged ({problem}); {reconvert(out)}: it writes the manifest again")
    return man


def shard_folders(folder: Path) -> list[Path]:
    """A sharded split's shards in write order, from its manifest; the manifest and each shard's data.mdb
    checked (etl mean and etl verify read them as one split)."""
    out = folder.parent
    split = folder.name[:-len("_db")] if folder.name.endswith("_db") else None
    shards = [folder / s["name"] for s in load_manifest(folder, split, out)["shards"]]
    for shard in shards:
        shard_entries(shard, out)
    return shards


def _whole(value: Any, least: int = 0) -> bool:
    return type(value) is int and value >= least


def _manifest_problem(man: Any, split: str | None) -> str:
    """What is wrong with a manifest's content, or ''."""
    if not isinstance(man, dict):
        return f"a JSON {type(man).__name__}, not an object"
    if man.get("format") != FORMAT or not isinstance(split, str) or man.get("split") != split:
        return f"not an {FORMAT} manifest of split {split}"
    if not (_whole(man.get("chunk_size"), 1) and all(_whole(man.get(k)) for k in ("commit_every", "commit_bytes",
                                                                                    "records"))):
        return "chunk_size, commit_every, commit_bytes or records is not a whole number"
    shards = man.get("shards")
    if not isinstance(shards, list) or not shards:
        return "no list of shards"
    for s in shards:
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and _plain_name(s["name"])
                and all(_whole(s.get(k)) for k in ("first_item", "items", "records"))):
            return f"shard entry {json.dumps(s)[:80]} lacks a folder name, first_item, items or records"
    if sum(s["records"] for s in shards) != man["records"]:
        return f"its shards' records do not add up to its total {man['records']}"
    return ""


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..")


def check_shard(p: SplitPaths, s: dict[str, Any]) -> None:
    """Before anything is written: the shard's database is whole (a cut data.mdb would kill the merge with
    SIGBUS) and holds the manifest's count, its conversion finished, and its checksums are there to check
    each record against (without them a damaged record would be certified as good)."""
    folder = p.db / s["name"]
    redo = redo_shard(folder, p.out)
    entries = shard_entries(folder, p.out)
    _check_done(folder, p.out)
    if entries != s["records"]:
        raise UsageError(f"shard {folder} holds {entries} records, {MANIFEST} says {s['records']}; {redo}")
    sums = folder / CHECKPOINT_DIR / sums_name(p.split)
    try:
        with open(sums, "rb") as fh:
            lines = sum(1 for _ in fh)
    except OSError as exc:
        raise UsageError(f"shard {folder} has no readable {CHECKPOINT_DIR}/{sums.name} ({exc.strerror}): its "
                         f"records cannot be checked, and merging would certify them as good; {redo}") from None
    if lines != entries:
        raise UsageError(f"shard {folder}: {CHECKPOINT_DIR}/{sums.name} has {lines} lines for its {entries} records "
                         f"(damaged); {redo}")


def redo_shard(folder: Path, out: Path) -> str:
    return f"remove the shard folder {folder} and {reconvert(out)}: it converts that shard again"


def shard_entries(folder: Path, out: Path) -> int:
    """A shard's record count, once its data.mdb is known whole (a cut one would kill its reader with SIGBUS);
    one line with what to do when it is missing or damaged."""
    if not (folder / "data.mdb").is_file():
        raise UsageError(f"shard {folder} is missing: it holds records {MANIFEST} lists; {reconvert(out)}")
    try:
        env = open_checked(str(folder), max_dbs=0)
    except (DamagedDatabase, lmdb.Error, OSError) as exc:
        raise UsageError(f"shard {folder} is damaged: {_reason(exc)}; {redo_shard(folder, out)}") from None
    try:
        return int(env.stat()["entries"])
    finally:
        env.close()


def _check_done(folder: Path, out: Path) -> None:
    """The shard's done marker, written last by its conversion: there, and a JSON object."""
    marker = folder / CHECKPOINT_DIR / DONE
    if not marker.is_file():
        raise UsageError(f"shard {folder} has no {CHECKPOINT_DIR}/{DONE}: its conversion did not finish; "
                         f"{reconvert(out)}")
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        record = exc
    if not (isinstance(record, dict) and isinstance(record.get("job"), str) and isinstance(record.get("shard"), dict)):
        what = f"{type(record).__name__}: {record}" if isinstance(record, Exception) else "not a done record"
        raise UsageError(f"{marker} is damaged ({what}); remove the shard folder {folder} and {reconvert(out)}: it "
                         "converts that shard again")


def _reason(exc: BaseException) -> str:
    """A damaged database's finding, without the reader's own advice (merge says what to do itself)."""
    return str(exc).split("; copy it again")[0]


def merge_split(p: SplitPaths, man: dict[str, Any], keep_shards: bool, progress: bool) -> MergeStats:
    """Build, then swap; a write that fails (a full or read-only disk) is one line, and the build is removed, so
    that running etl merge again once there is room gives the same bytes."""
    t0 = time.perf_counter()
    try:
        records, data_bytes = build(p, man, progress)
    except (OSError, lmdb.Error) as exc:
        raise PipelineError(_write_failed(exc, p.merging, p.out)) from None
    aside = p.shards if keep_shards else p.deleting
    try:
        os.rename(p.db, aside)  # 1: the shards aside; from here recover() finishes the swap
        _sync_dir(p.out)
        _finish_swap(p, aside)
    except OSError as exc:
        raise PipelineError(_write_failed(exc, p.db, p.out)) from None
    return MergeStats(p.split, records, data_bytes, time.perf_counter() - t0)


def _write_failed(exc: BaseException, path: Path, out: Path) -> str:
    return write_failure(exc, path, f"etl merge {out}", f"etl merge writes into {out}: make it writable (or copy "
                         f"the dataset to a disk that is), then run etl merge on it")


def _finish_swap(p: SplitPaths, aside: Path) -> None:
    if p.sums_merging.exists():
        os.replace(p.sums_merging, p.sums)  # 2: the checksums (a sharded split has none in OUT)
    os.rename(p.merging, p.db)  # 3: the merged database; the split is merged from here
    _sync_dir(p.out)
    if aside == p.deleting:  # 4: the shards, unless kept (a kill meanwhile: recover() deletes the rest)
        shutil.rmtree(p.deleting)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build(p: SplitPaths, man: dict[str, Any], progress: bool) -> tuple[int, int]:
    """The merged database in `.merging`, written in the one-machine writer's transactions; (records, bytes).
    A build that stops (bad record, full disk, Ctrl-C) is removed: nothing half-merged is left behind."""
    _remove_build(p)  # a build a kill cut short starts over
    try:
        sink = ChecksumSink(LmdbSink(p.merging), p.sums_merging)
        try:
            with ProgressBar(total=man["records"], desc=f"merge {p.split}", unit="rec", disable=not progress) as bar:
                written, data_bytes = write_chunks(sink, all_records(p, man), man, bar)
            if sink.records() != man["records"] or written != man["records"]:
                raise UsageError(f"merging {p.db.name} gave {sink.records()} records, {MANIFEST} says "
                                 f"{man['records']}")
        finally:
            sink.close()
        _sync_dir(p.merging)
        _sync_dir(p.out)
    except BaseException:
        _remove_build(p)
        raise
    return written, data_bytes


def _remove_build(p: SplitPaths) -> None:
    shutil.rmtree(p.merging, ignore_errors=True)
    p.sums_merging.unlink(missing_ok=True)


def write_chunks(sink: ChecksumSink, records: Iterator[Record], man: dict[str, Any],
                 bar: ProgressBar) -> tuple[int, int]:
    """Records in item order, added a chunk at a time; after each chunk, a commit by the writer's rule
    (etl.writer._write_chunk), and at the end one more: the one-machine run's transactions exactly."""
    chunk_size, every, limit = int(man["chunk_size"]), int(man["commit_every"]), int(man["commit_bytes"])
    written = pending_bytes = data_bytes = 0
    chunk: list[Record] = []
    for rec in records:
        if chunk and rec.index // chunk_size != chunk[0].index // chunk_size:
            sink.add(chunk, written)
            written += len(chunk)
            size = sum(len(r.value) for r in chunk)
            pending_bytes, data_bytes = pending_bytes + size, data_bytes + size
            if sink.pending >= every or 0 < limit <= pending_bytes:
                sink.commit(written)
                sink.release_pages()
                pending_bytes = 0
            bar.update(len(chunk))
            chunk = []
        chunk.append(rec)
    sink.add(chunk, written)
    written += len(chunk)
    data_bytes += sum(len(r.value) for r in chunk)
    sink.commit(written)
    bar.update(len(chunk))
    return written, data_bytes


def all_records(p: SplitPaths, man: dict[str, Any]) -> Iterator[Record]:
    """Every shard's records in order, each checked: its key, its place, its checksum line."""
    last = -1
    for s in man["shards"]:
        first, end = int(s["first_item"]), int(s["first_item"]) + int(s["items"])
        count = 0
        for rec in shard_records(p.db / s["name"], p.split):
            if not max(first, last + 1) <= rec.index < end:
                folder = p.db / s["name"]
                raise UsageError(f"shard {folder}: item {rec.index} is out of order or outside its items "
                                 f"{first}..{end - 1}; {redo_shard(folder, p.out)}")
            last = rec.index
            count += 1
            yield rec
        if count != s["records"]:
            raise UsageError(f"shard {s['name']} holds {count} records, {MANIFEST} says {s['records']}")


def shard_records(folder: Path, split: str) -> Iterator[Record]:
    """One shard's records in key order, each against its checksum line; the label and item index come from the
    key. check_shard has made sure that the database is whole and its sums are there."""
    sums_file = folder / CHECKPOINT_DIR / sums_name(split)
    where = f"{CHECKPOINT_DIR}/{sums_file.name}"
    env = open_checked(str(folder), readahead=False, max_dbs=0)
    try:
        with env.begin() as txn, open(sums_file, "rb") as sums:
            for key, value in txn.cursor():
                rec = _record(folder, bytes(key), bytes(value))
                if sums.readline() != b"%s %s\n" % (key, record_sum(value, rec.crc)):
                    raise UsageError(f"shard {folder}: record {bytes(key).decode(errors='replace')} disagrees with "
                                     f"its line in {where}: the record or the line is damaged; "
                                     f"{redo_shard(folder, folder.parent.parent)}")
                yield rec
    finally:
        env.close()


def _record(folder: Path, key: bytes, value: bytes) -> Record:
    index, _, label = key.partition(b"_")
    if not (index.isdigit() and label.isdigit() and key == b"%08d_%d" % (int(index), int(label))):
        raise UsageError(f"shard {folder}: key {key.decode(errors='replace')!r} is not <item>_<label>; "
                         f"{redo_shard(folder, folder.parent.parent)}")
    return Record(int(index), int(label), "", value, zlib.crc32(value))
