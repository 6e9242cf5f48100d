"""Checkpoint: what makes a run resumable: the job's identity, and per split the last commit's state.

Commit protocol (the writer runs it): list and skip files, and the records' checksums, are flushed
and fsynced, the mean's pixel sum is saved, `<split>.pending.json` describes the commit about to happen, LMDB commits,
then pending becomes `<split>.state.json`. After a crash at any point the database's record count
matches exactly one of state or pending, and everything else is cut back to it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from etl import __version__
from etl.layout import CHECKPOINT_DIR, JOB
from etl.messages import Item, SplitState
from etl.settings import UsageError, default_of

if TYPE_CHECKING:
    from etl.sources.base import Reader

STAMP_MOD = 1 << 64

def fsync_write(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, rename: the file is either old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        with suppress(OSError):  # a full disk: leave no half file behind to be taken for a run's output
            tmp.unlink(missing_ok=True)
        raise


def plan_digest(items: list[Item]) -> str:
    """A fingerprint of a split's content and order: resuming needs the very same list."""
    h = hashlib.sha256()
    for item in items:
        h.update(f"{item.index}\0{item.path}\0{item.label}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def item_stamp(index: int, stamp: int) -> int:
    """One item's share of an input stamp: its place in the write order and its reader's stamp, hashed to 64
    bits (blake2b is the same in every process, which hash() is not), so that one changed item moves the sum."""
    return int.from_bytes(hashlib.blake2b(b"%d:%d" % (index, stamp), digest_size=8).digest(), "little")


def add_stamps(a: int, b: int) -> int:
    return (a + b) % STAMP_MOD


def stamp_sum(reader: Reader, items: Iterable[Item], tick: Callable[[int], None] | None = None) -> int:
    """The items' stamps summed mod 2**64: the same in any order and however the items are cut into chunks, so
    workers sum their chunks, the writer its commits, and a resume the committed items in one go.
    tick(n): n more items stamped (a progress bar), every 4,096."""
    total = 0
    for n, item in enumerate(items, 1):
        total += item_stamp(item.index, reader.stamp(item))
        if tick is not None and n % 4096 == 0:
            tick(4096)
    return total % STAMP_MOD


def check_unchanged(split: str, reader: Reader, items: list[Item], recorded: int | None,
                    tick: Callable[[int], None] | None = None) -> None:
    """Refuse to resume when the items already committed are not the files they were converted from (same
    names, other content): the dataset would silently keep the old records. recorded None: an older etl's
    checkpoint, which has no stamp to compare with."""
    if recorded is None or not items:
        return
    if stamp_sum(reader, items, tick) != recorded:
        raise UsageError(f"--resume: {split} images already converted have changed since they were converted "
                         "(replaced or modified under the same name); convert again with --overwrite")


def release_tuple(version: str) -> tuple[int, ...]:
    """An etl version as numbers to compare ("0.10.1" after "0.9"); () when it holds none."""
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


SUMS_SINCE = (0, 4)  # the etl release that began writing <split>_db.sums
OLDEST = "0.2"  # what a job.json without its etl_version was started by: versions before 0.3 did not record it


class Checkpoint:
    """The files under OUT_DIR/.etl that record a run's progress."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir) / CHECKPOINT_DIR

    def path(self, name: str) -> Path:
        return self.dir / name

    def start_job(self, settings: dict[str, Any], digests: dict[str, str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        job = {"settings": settings, "splits": digests, "etl_version": __version__}
        if settings.get("val_labels"):
            job[VAL_LABELS_SUM] = file_digest(settings["val_labels"])
        fsync_write(self.path(JOB), json.dumps(job).encode())

    def check_resume(self, settings: dict[str, Any], digests: dict[str, str]) -> None:
        """Refuse to resume with other settings or other input than the first run had."""
        try:
            job = json.loads(self.path(JOB).read_text())
        except OSError:
            raise UsageError(f"nothing to resume in {self.dir.parent}: no checkpoint from an earlier run") from None
        except ValueError as exc:
            raise damaged(self.path(JOB), exc) from None
        _check_job(self.path(JOB), job)
        started_by = job.get("etl_version", OLDEST)
        if release_tuple(started_by) > release_tuple(__version__):
            raise UsageError(f"--resume: this run was started by etl {started_by}, newer than this etl "
                             f"{__version__}, and its checkpoint may not read here: resume it with etl {started_by}")
        # An option newer than the first run's etl had its default there.
        before = {**{k: default_of(k) for k in settings}, **job["settings"]}
        changed = [k for k in sorted(set(before) | set(settings))
                   if not _same_setting(k, before.get(k), settings.get(k))]
        if changed:
            k = changed[0]
            raise UsageError(f"--resume needs the first run's settings: {k} was {before.get(k)!r}, "
                             f"now {settings.get(k)!r}")
        for split, digest in digests.items():
            if job["splits"].get(split) != digest:
                _refuse_changed_val_labels(split, job, settings.get("val_labels"))
                raise UsageError(f"--resume: the {split} images differ from the first run's (files added, "
                                 "removed or renamed); convert again with --overwrite")

    def started_by(self) -> str | None:
        """The etl version that started the job, from job.json; None when there is none to read (a shard's
        checkpoint has none; a copy without .etl/) or it names no version."""
        try:
            job = json.loads(self.path(JOB).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        version = job.get("etl_version", OLDEST) if isinstance(job, dict) else None
        return version if isinstance(version, str) and release_tuple(version) else None

    def sums_owed(self) -> bool:
        """Whether every record already committed has its checksum line: the job was started by an etl that
        writes them, or has no job.json here (a shard's checkpoint: shards came after the checksums)."""
        version = self.started_by()
        return version is None or release_tuple(version) >= SUMS_SINCE

    def save_pending(self, split: str, state: SplitState) -> None:
        raw = asdict(state)
        if not state.colour_conversions:  # left out when empty: such a state reads as an earlier etl wrote it
            del raw["colour_conversions"]
        fsync_write(self.path(f"{split}.pending.json"), json.dumps(raw).encode())

    def promote_pending(self, split: str) -> None:
        os.replace(self.path(f"{split}.pending.json"), self.path(f"{split}.state.json"))

    def save_sum(self, split: str, chunks: int, tail: np.ndarray) -> None:
        """The mean's sum vector, or its tail when the front is all zeros, in the smallest type that
        holds it (uint32 up to 16 M images): written at every commit, so its size is the writer's time."""
        small = np.uint32 if tail.size and 0 <= tail.min() and tail.max() <= np.iinfo(np.uint32).max else tail.dtype
        buf = io.BytesIO()
        np.save(buf, tail.astype(small, copy=False))
        fsync_write(self.path(f"{split}.sum.{chunks}.npy"), buf.getvalue())

    def drop_sums_except(self, split: str, keep: set[int]) -> None:
        for path in self.dir.glob(f"{split}.sum.*.npy"):
            if int(path.name.split(".")[2]) not in keep:
                path.unlink(missing_ok=True)

    def load_sum(self, split: str, chunks: int, size: int, required: bool = False) -> np.ndarray | None:
        """The sum vector saved at that commit, whole (size entries, int64); an (H, W, C) array as etl 0.1
        saved it comes back as it is. required: records were committed, so their sum was saved: its absence
        is damage (a mean made without it would be wrong in silence)."""
        path = self.path(f"{split}.sum.{chunks}.npy")
        if not path.exists():
            if required:
                raise damaged(path, FileNotFoundError("missing"))
            return None
        try:
            saved = np.load(path, allow_pickle=False).astype(np.int64)
        except (OSError, ValueError, EOFError) as exc:
            raise damaged(path, exc) from None
        if saved.ndim not in (1, 3) or saved.size > size:
            raise damaged(path, ValueError(f"an array of shape {saved.shape}, not a sum of {size} values"))
        if saved.ndim != 1 or saved.size == size:
            return saved
        return np.concatenate([np.zeros(size - saved.size, np.int64), saved])  # the zeros save_sum left out

    def state_for(self, split: str, records_in_db: int) -> SplitState:
        """The state whose record count matches the database: the last commit that really happened."""
        candidates, broken = [], []
        for name in (f"{split}.state.json", f"{split}.pending.json"):
            try:
                candidates.append(checked_state(json.loads(self.path(name).read_text())))
            except FileNotFoundError:
                continue
            except (ValueError, TypeError) as exc:  # not JSON, or not a state's fields
                broken.append(damaged(self.path(name), exc))
        for state in candidates:
            if state.records == records_in_db:
                return state
        if broken:
            raise broken[0]
        if records_in_db == 0:
            return SplitState()
        raise UsageError(f"cannot resume {split}: its database holds {records_in_db} records but no checkpoint "
                         f"({self.path(f'{split}.state.json')}) matches that count; convert again with --overwrite")


VAL_LABELS_SUM = "val_labels_sha256"  # job.json: the --val-labels file's content, to name it when it changed


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _refuse_changed_val_labels(split: str, job: dict[str, Any], val_labels: str | None) -> None:
    """The val split's list holds the class each labels file line gives: an edited labels file changes it,
    and that is the cause to name (its name is the same, or the settings check would have said so).
    A job.json from before etl recorded the file's sum cannot tell."""
    if split != "val" or not val_labels or not isinstance(job.get(VAL_LABELS_SUM), str):
        return
    try:
        same = file_digest(val_labels) == job[VAL_LABELS_SUM]
    except OSError:
        return  # read again moments ago to plan the split: gone since, the split's own message stands
    if not same:
        raise UsageError(f"--resume: the val labels file {val_labels} changed since the first run (the classes it "
                         "gives the val images differ): put back the first run's file and resume, or convert again "
                         "with --overwrite")


def _check_job(path: Path, job: Any) -> None:
    """job.json must be the object start_job wrote: any other JSON is damage, said as such (not a traceback)."""
    fields = {"settings": dict, "splits": dict, "etl_version": str, VAL_LABELS_SUM: str}
    optional = ("etl_version", VAL_LABELS_SUM)  # an older etl's job.json lacks them
    if not isinstance(job, dict):
        raise damaged(path, TypeError(f"a JSON {type(job).__name__}, not an object"))
    for name, kind in fields.items():
        if not isinstance(job.get(name, "" if name in optional else None), kind):
            raise damaged(path, TypeError(f"its {name} is {job.get(name)!r}"))


STATE_TYPES: dict[str, tuple[type, ...]] = {"chunks": (int,), "records": (int,), "complete": (bool,),
                                            "per_label": (dict,), "bytes_read": (int,), "stage_seconds": (dict,),
                                            "input_stamp": (int, type(None)), "colour_conversions": (dict,)}


def checked_state(raw: Any) -> SplitState:
    """A split's state as read back: TypeError when it is not the object a commit wrote (the wrong JSON type, a
    field of the wrong type, a count below zero)."""
    if not isinstance(raw, dict):
        raise TypeError(f"a JSON {type(raw).__name__}, not an object")
    state = SplitState.from_json(raw)
    for name, kinds in STATE_TYPES.items():
        value = getattr(state, name)
        wrong_int = isinstance(value, bool) and bool not in kinds  # JSON true is no count
        if not isinstance(value, kinds) or wrong_int or (isinstance(value, int) and value < 0):
            raise TypeError(f"its {name} is {value!r}")
    for name in ("per_label", "colour_conversions"):
        counts = getattr(state, name)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts.values()):
            raise TypeError(f"its {name} is {counts!r}")
    return state


PATH_SETTINGS = ("train_dir", "val_dir", "val_labels", "root", "val_root", "labels")


def _same_setting(name: str, before: Any, now: Any) -> bool:
    """Inputs are the same input however they are spelled (train/, ./train, its absolute path)."""
    if name in PATH_SETTINGS and isinstance(before, str) and isinstance(now, str):
        return os.path.realpath(before) == os.path.realpath(now)
    return before == now


def damaged(path: Path, exc: Exception) -> UsageError:
    """A checkpoint file that cannot be read: resuming again cannot help."""
    return UsageError(f"the checkpoint file {path} is damaged ({type(exc).__name__}: {exc}); the run cannot be "
                      "resumed: convert again with --overwrite")


def truncate_lines(path: Path, keep: int) -> None:
    """Cut a list file back to its first `keep` lines (lines are written before their commit); a list that holds
    fewer whole lines than that lost some since (cut, emptied, replaced or removed): damage, never a shorter list."""
    if keep == 0 and not path.exists():
        return
    try:
        with open(path, "rb+") as fh:
            offset = 0
            for n in range(keep):
                line = fh.readline()
                if not line.endswith(b"\n"):
                    raise ValueError(f"it holds {n} whole lines, and the last commit counted {keep} records")
                offset += len(line)
            fh.truncate(offset)
    except (FileNotFoundError, ValueError) as exc:
        raise damaged(path, exc) from None


SKIP_FIELDS = {"chunk": int, "kind": str, "path": str, "reason": str}
SKIP_KINDS = ("skipped", "warning")


def skips_before(path: Path, chunks: int) -> list[dict[str, Any]]:
    """The skip/warning entries of chunks already committed; rewrites the file to hold only those. Only its last
    line may be unreadable (half-written when the run died); any other would drop a skip from the report."""
    if not path.exists():
        if chunks:  # written (empty) when the run began: without it the report would lose its skips
            raise damaged(path, FileNotFoundError("missing"))
        return []
    kept = []
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    lines = text.splitlines()
    for n, line in enumerate(lines):
        try:
            entry = _skip_entry(line)
        except (ValueError, TypeError) as exc:
            if n == len(lines) - 1 and not text.endswith("\n"):
                continue  # a line half-written when the run died
            raise damaged(path, ValueError(f"line {n + 1}: {exc}")) from None
        if entry["chunk"] < chunks:
            kept.append(entry)
    fsync_write(path, "".join(json.dumps(e) + "\n" for e in kept).encode("utf-8", "surrogateescape"))
    return kept


def _skip_entry(line: str) -> dict[str, Any]:
    entry = json.loads(line)
    if not isinstance(entry, dict) or entry.get("kind") not in SKIP_KINDS or any(
            not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool)
            for name, kind in SKIP_FIELDS.items()):
        raise TypeError(f"not a skip entry: {line[:80]!r}")
    return entry
