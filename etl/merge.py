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

from etl.errors import UsageError
from etl.layout import CHECKPOINT_DIR, REPORT, SPLITS, db_path, sums_name, sums_path
from etl.messages import Record
from etl.outlock import exclusive
from etl.progress import ProgressBar
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
    out = Path(out_dir)
    if not (out / REPORT).is_file():
        raise UsageError(f"{out} is not an etl dataset folder (no {REPORT}): give the folder etl convert wrote")
    done: list[MergeStats] = []
    with exclusive(out):
        paths = [SplitPaths(out, split) for split in SPLITS]
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


def _merged_note(p: SplitPaths) -> str:
    kept = f"; its shards are kept in {p.shards.name}" if p.shards.is_dir() else ""
    return f"{p.db.name} is one database already (no {MANIFEST}): left alone{kept}"


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
    """The manifest, checked against the shard folders; every shard's conversion must have finished."""
    where = f"{p.db.name}/{MANIFEST}"
    try:
        man = json.loads((p.db / MANIFEST).read_text(encoding="utf-8"))
        shards, chunk = man["shards"], int(man["chunk_size"])
        int(man["commit_every"]), int(man["commit_bytes"]), int(man["records"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read {where}: {exc}") from None
    if man.get("format") != FORMAT or man.get("split") != p.split or chunk < 1:
        raise UsageError(f"{where} is not an {FORMAT} manifest of split {p.split}")
    if sum(s["records"] for s in shards) != man["records"]:
        raise UsageError(f"{where}: its shards' records do not add up to its total {man['records']}")
    for s in shards:
        folder = p.db / s["name"]
        if not (folder / "data.mdb").is_file():
            raise UsageError(f"shard {folder} is missing: it holds records {where} lists")
        if not (folder / CHECKPOINT_DIR / DONE).is_file():
            raise UsageError(f"shard {folder} has no {CHECKPOINT_DIR}/{DONE}: its conversion did not finish; "
                             "run etl convert --resume for it first")
    if p.shards.exists():
        raise UsageError(f"{p.shards} is in the way (shards kept by an earlier merge?): move it away or remove it")
    return man


def merge_split(p: SplitPaths, man: dict[str, Any], keep_shards: bool, progress: bool) -> MergeStats:
    t0 = time.perf_counter()
    records, data_bytes = build(p, man, progress)
    aside = p.shards if keep_shards else p.deleting
    os.rename(p.db, aside)  # 1: the shards aside; from here recover() finishes the swap
    _sync_dir(p.out)
    _finish_swap(p, aside)
    return MergeStats(p.split, records, data_bytes, time.perf_counter() - t0)


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
    """The merged database in `.merging`, written in the one-machine writer's transactions; (records, bytes)."""
    shutil.rmtree(p.merging, ignore_errors=True)  # a build a kill cut short starts over
    p.sums_merging.unlink(missing_ok=True)
    sink = ChecksumSink(LmdbSink(p.merging), p.sums_merging)
    try:
        with ProgressBar(total=man["records"], desc=f"merge {p.split}", unit="rec", disable=not progress) as bar:
            written, data_bytes = write_chunks(sink, all_records(p, man), man, bar)
        if sink.records() != man["records"] or written != man["records"]:
            raise UsageError(f"merging {p.db.name} gave {sink.records()} records, {MANIFEST} says {man['records']}")
    finally:
        sink.close()
    _sync_dir(p.merging)
    _sync_dir(p.out)
    return written, data_bytes


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
                raise UsageError(f"shard {s['name']}: item {rec.index} is out of order or outside its items "
                                 f"{first}..{end - 1}")
            last = rec.index
            count += 1
            yield rec
        if count != s["records"]:
            raise UsageError(f"shard {s['name']} holds {count} records, {MANIFEST} says {s['records']}")


def shard_records(folder: Path, split: str) -> Iterator[Record]:
    """One shard's records in key order; the label and item index come from the key."""
    sums_file = folder / CHECKPOINT_DIR / sums_name(split)
    env = lmdb.open(str(folder), readonly=True, lock=False, readahead=False, max_dbs=0)
    sums = open(sums_file, "rb") if sums_file.is_file() else None
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                rec = _record(folder, bytes(key), bytes(value))
                if sums is not None and sums.readline() != b"%s %s\n" % (key, record_sum(value, rec.crc)):
                    raise UsageError(f"shard {folder.name}: record {bytes(key).decode(errors='replace')} "
                                     f"disagrees with its line in {CHECKPOINT_DIR}/{sums_file.name}")
                yield rec
    finally:
        if sums is not None:
            sums.close()
        env.close()


def _record(folder: Path, key: bytes, value: bytes) -> Record:
    index, _, label = key.partition(b"_")
    if not (index.isdigit() and label.isdigit() and key == b"%08d_%d" % (int(index), int(label))):
        raise UsageError(f"shard {folder.name}: key {key.decode(errors='replace')!r} is not <item>_<label>")
    return Record(int(index), int(label), "", value, zlib.crc32(value))
