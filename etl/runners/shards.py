"""Shards: a split cut into contiguous slices of its write order, each converted by a runner into an LMDB of its
own (OUT/<split>_db/00000-of-00029/), then put back together: list, mean sum, figures and a manifest."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from etl.checkpoint import Checkpoint, fsync_write, plan_digest
from etl.errors import Interrupted, UsageError
from etl.layout import CHECKPOINT_DIR, Layout, db_path, list_path
from etl.meansum import mean_layout
from etl.memory import MB, commit_records
from etl.messages import Failure, WriterSummary, add_counts
from etl.options import opt_of
from etl.pagecache import CacheChoice
from etl.settings import FIELDS, Settings, default_of
from etl.sinks import MeanSink
from etl.sources.base import Split
from etl.stats import SplitStats

MANIFEST = "manifest.json"  # in OUT/<split>_db/: the shards in write order (DALI reads them in that order)
DONE = "done.json"  # in a shard's .etl/: written last, once the shard is complete
FORMAT = "etl-shards-1"


class Shard(NamedTuple):
    """One slice of a split's write order: items [first, first + items)."""

    name: str  # "00003-of-00029": names sort in write order
    first: int
    items: int


def shard_images(s: Settings) -> int:
    """--shard-size rounded up to whole chunks, so that a shard's chunks are the one-machine run's chunks (its
    commits fall where that run's do, which etl merge repeats)."""
    assert s.shard_size is not None
    return -(-s.shard_size // s.chunk_size) * s.chunk_size


def cut(split: Split, s: Settings) -> list[Shard]:
    size = shard_images(s)
    n = max(1, -(-len(split.items) // size))
    return [Shard(f"{k:05d}-of-{n:05d}", k * size, min(size, len(split.items) - k * size)) for k in range(n)]


class ShardedRunner:
    """Runs each shard of a split through the runner it wraps, one after the other, each into its own LMDB and
    checkpoint; a shard whose done marker matches this job is not run again (--resume)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def run_split(self, split: Split, s: Settings, out: Path, cache: CacheChoice, progress: bool) -> SplitStats:
        t0 = time.monotonic()
        folder = db_path(out, split.name)
        if (folder / "data.mdb").exists():
            raise UsageError(f"{folder} is one database (etl merge joined its shards): it is complete; convert "
                             "again with --overwrite to make shards again")
        folder.mkdir(exist_ok=True)
        shards = cut(split, s)
        at_once = shard_writers(s, len(shards))
        if at_once == 1:
            done: list[dict[str, Any]] = []
            for shard in shards:
                try:
                    done.append(convert_shard(self.inner, split, shard, s, folder / shard.name, cache, progress))
                except (Interrupted, KeyboardInterrupt) as exc:
                    if isinstance(exc, Interrupted) and exc.exit_code != 130:  # --on-error fail: it names the file
                        raise
                    finished = {d["shard"]["name"] for d in done}
                    raise Interrupted(interrupted_text(split, shards, folder, s.chunk_size, finished), 130) from None
        else:
            from etl.runners.shardprocs import ConcurrentShards  # it runs convert_part, from here

            done = ConcurrentShards(self.inner.ctx, split, s, folder, cache, at_once).run(shards, progress)
        return assemble(split, shards, done, s, out, time.monotonic() - t0)


WORKERS_PER_WRITER = 16  # one writer keeps up with about 25-30 workers (benchmarks.md): one shard per 16 workers


def shard_writers(s: Settings, shards: int) -> int:
    """Shards converted at once, each with its own writer and its share of the workers: --shard-writers, or
    one per 16 workers."""
    wanted = s.shard_writers or max(1, s.worker_count // WORKERS_PER_WRITER)
    return max(1, min(wanted, shards, s.worker_count))


def committed_images(split: str, shards: list[Shard], folder: Path, chunk_size: int, finished: set[str]) -> int:
    """Images done: every image of a finished shard, and those of the others' committed chunks (their state)."""
    total = 0
    for shard in shards:
        if shard.name in finished:
            total += shard.items
            continue
        state = folder / shard.name / CHECKPOINT_DIR / f"{split}.state.json"
        try:
            total += min(int(json.loads(state.read_text())["chunks"]) * chunk_size, shard.items)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not begun, or its state unreadable: the resume says so
    return total


def interrupted_text(split: Split, shards: list[Shard], folder: Path, chunk_size: int, finished: set[str]) -> str:
    """Ctrl-C in a sharded split: the split's figures (never one shard's), and how to go on."""
    images = committed_images(split.name, shards, folder, chunk_size, finished)
    return (f"interrupted: {split.name} has {images:,d} of {len(split.items):,d} images converted and committed "
            f"({len(finished)} of {len(shards)} shards complete); run the same command with --resume to continue")


def shard_part(split: Split, shard: Shard) -> Split:
    """The shard's own split: its items (which keep their places in the whole write order) and their skips."""
    end = shard.first + shard.items
    return Split(split.name, split.reader, split.items[shard.first:end],
                 {i: why for i, why in split.give_up.items() if shard.first <= i < end})


def finished(where: Path, job: str) -> dict[str, Any] | None:
    """The shard's done marker, if it is this job's: the shard is complete and need not run again."""
    marker = where / CHECKPOINT_DIR / DONE
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("shard"), dict):
            raise TypeError(f"a JSON {type(record).__name__} that is not a done record")
        if record.get("job") == job:  # what assemble will read of it, and add up
            parts = [_stats_from(record)]
            combine(parts[0].name, parts, 0.0)
            if not isinstance(record["shard"]["items"], int):
                raise TypeError(f"its shard is {record['shard']!r}")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UsageError(f"the shard's done marker {marker} is damaged ({type(exc).__name__}: {exc}): remove it "
                         "and run the same command with --resume (the shard goes on from its last commit)") from None
    return {**record, "resumed": True} if record.get("job") == job else None


def convert_shard(runner: Any, split: Split, shard: Shard, s: Settings, where: Path, cache: CacheChoice,
                  progress: bool) -> dict[str, Any]:
    """One shard into its own folder `where` by `runner` (a LocalRunner: on this machine, or on a Ray node);
    returns its done record, also written last as `where/.etl/done.json`. With --resume, a shard already done
    for this job is taken as it is, and one with a commit is continued; any other is started afresh."""
    return convert_part(runner, shard_part(split, shard), shard, s, where, cache, progress)


def convert_part(runner: Any, part: Split, shard: Shard, s: Settings, where: Path, cache: CacheChoice,
                 progress: bool) -> dict[str, Any]:
    """convert_shard, given the shard's own split (`shard_part`): what a Ray task is sent, not the whole split."""
    job = identity(s, part)
    if s.resume and (record := finished(where, job)) is not None:
        return record
    resume = s.resume and Checkpoint(where).path(f"{part.name}.state.json").is_file()
    if not resume and where.exists():
        shutil.rmtree(where)  # begun by a run that never committed, or of another job: start it afresh
    (where / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    stats = runner.run_split(part, replace(s, out_dir=str(where), in_shard=True, resume=resume), where, cache,
                             progress)
    record = {"job": job, "shard": shard._asdict(), "stats": _stats_json(stats)}
    fsync_write(where / CHECKPOINT_DIR / DONE, json.dumps(record).encode())
    return {**record, "resumed": False}


# Options newer than the shard marker (declared with `since`): at their default they are left out of its identity,
# which thus stays what an earlier etl wrote (a shard it finished is still taken as done on --resume).
NEWER_OPTIONS = frozenset(name for name, f in FIELDS.items() if opt_of(f).since)


def identity(s: Settings, part: Split) -> str:
    """What a done marker must match to be taken as this shard's: the options that decide the bytes, and its items."""
    settings = {k: v for k, v in s.output_settings().items() if k not in NEWER_OPTIONS or v != default_of(k)}
    text = json.dumps(settings, sort_keys=True, default=str) + plan_digest(part.items)
    return hashlib.sha256(text.encode()).hexdigest()


def _stats_json(stats: SplitStats) -> dict[str, Any]:
    plain = {f.name: getattr(stats, f.name) for f in fields(SplitStats)
             if f.name not in ("failures", "warnings", "writer", "started")}
    plain["failures"] = [list(f) for f in stats.failures]
    plain["warnings"] = [list(f) for f in stats.warnings]
    plain["writer"] = asdict(stats.writer) if stats.writer else None
    return plain


def _stats_from(record: dict[str, Any]) -> SplitStats:
    plain = dict(record["stats"])
    writer = plain.pop("writer")
    stats = SplitStats(**{k: v for k, v in plain.items() if k not in ("failures", "warnings")})
    stats.failures = [Failure(*f) for f in plain["failures"]]
    stats.warnings = [Failure(*f) for f in plain["warnings"]]
    stats.writer = WriterSummary(**writer) if writer else None
    return stats


def assemble(split: Split, shards: list[Shard], done: list[dict[str, Any]], s: Settings, out: Path,
             wall: float) -> SplitStats:
    """The split as one: its list file, the mean's sum, its figures (each shard's kept in report.json), and
    the manifest, written last."""
    parts = [_stats_from(record) for record in done]
    total = combine(split.name, parts, wall)
    total.resumed_from = sum(p.written for p, r in zip(parts, done, strict=True) if r["resumed"]) + \
        sum(p.resumed_from for p, r in zip(parts, done, strict=True) if not r["resumed"])
    total.shards = [{"name": shard.name, "first_item": shard.first, "items": shard.items, "records": p.written,
                     "skipped": len(p.failures), "wall_seconds": round(p.wall_seconds, 3)}
                    for shard, p in zip(shards, parts, strict=True)]
    folder = db_path(out, split.name)
    shard_dirs = [folder / shard.name for shard in shards]
    _join_lists(split.name, shard_dirs, list_path(out, split.name))
    assert total.writer is not None
    total.writer.sum_chunks = _join_sums(split.name, shard_dirs, parts, s, out)
    manifest = {"format": FORMAT, "split": split.name, "shard_size": shard_images(s), "chunk_size": s.chunk_size,
                "commit_every": commit_records(s), "commit_bytes": s.max_buffer_mb * MB, "items": len(split.items),
                "records": total.written, "shards": total.shards}
    fsync_write(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    return total


def combine(name: str, parts: list[SplitStats], wall: float) -> SplitStats:
    """One split's figures from its shards': counts and times added up, peaks the largest."""
    total = SplitStats(name, sum(p.listed for p in parts), wall_seconds=wall)
    for p in parts:
        total.written += p.written
        total.failures += p.failures
        total.warnings += p.warnings
        total.worker_losses += p.worker_losses
        for key in ("bytes_read", "bytes_written", "resumed_bytes_read", "worker_cpu_total", "throttled_seconds",
                    "coordinator_cpu_seconds"):
            setattr(total, key, getattr(total, key) + getattr(p, key))
        for stage, seconds in p.stage_seconds.items():
            total.stage_seconds[stage] += seconds
        add_counts(total.colour_conversions, p.colour_conversions)
        total.worker_count = max(total.worker_count, p.worker_count)
        total.worker_max_rss_kb = max(total.worker_max_rss_kb, p.worker_max_rss_kb)
        total.coordinator_max_rss_kb = max(total.coordinator_max_rss_kb, p.coordinator_max_rss_kb)
        total.io = p.io
    total.writer = _writers([p.writer for p in parts if p.writer is not None])
    return total


def _writers(summaries: list[WriterSummary]) -> WriterSummary:
    total = WriterSummary()
    for w in summaries:
        for key in ("written", "commits", "map_size", "data_bytes", "cpu_seconds", "put_seconds", "commit_seconds",
                    "throttled_seconds"):
            setattr(total, key, getattr(total, key) + getattr(w, key))
        total.max_rss_kb = max(total.max_rss_kb, w.max_rss_kb)
        for label, n in w.per_label.items():
            total.per_label[label] = total.per_label.get(label, 0) + n
    total.per_label = dict(sorted(total.per_label.items(), key=lambda kv: int(kv[0])))
    return total


def _join_lists(split: str, shard_dirs: list[Path], target: Path) -> None:
    """train.txt: the shards' list lines, in write order."""
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as fh:
        for where in shard_dirs:
            fh.write(Layout(where, single_db=True).list(split).read_bytes())
    tmp.replace(target)


def _join_sums(split: str, shard_dirs: list[Path], parts: list[SplitStats], s: Settings, out: Path) -> int:
    """The mean's integer sum: the shards' sums added, saved in OUT's checkpoint as a writer saves its own (the
    mean files are made from it as from a one-machine run's). Returns the chunk count it is saved under."""
    layout = mean_layout(s.width, s.height, s.channels, split)
    if layout is None or not s.makes_mean:
        return 0
    total = layout.zeros(np.int64)
    chunks = 0
    for where, part in zip(shard_dirs, parts, strict=True):
        if part.writer is None or not part.writer.sum_chunks:
            continue
        sums = MeanSink(layout, Checkpoint(where), split)
        sums.resume(part.writer.sum_chunks, required=True)
        if sums.total is not None:
            total += sums.total
        chunks += part.writer.sum_chunks
    if not chunks:
        return 0
    joined = MeanSink(layout, Checkpoint(out), split)
    joined.total = total
    joined.save(chunks)
    return chunks
