"""Stats: per-split counters, the report.json written beside the databases, and the end-of-run summary."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from etl.messages import STAGES, Failure, Progress, WriterSummary, add_counts
from etl.procs import peak_rss_kb
from etl.words import before_colon, cut_at_word, plural


@dataclass
class SplitStats:
    """What happened to one database: counts, skips with reasons, time and CPU per stage."""

    name: str
    listed: int
    written: int = 0
    failures: list[Failure] = field(default_factory=list)
    warnings: list[Failure] = field(default_factory=list)
    bytes_read: int = 0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    started: float = field(default_factory=time.monotonic)
    wall_seconds: float = 0.0
    writer: WriterSummary | None = None
    coordinator_cpu_seconds: float = 0.0
    worker_count: int = 0
    resumed_from: int = 0  # records already in the database when this run started
    bytes_written: int = 0
    resumed_bytes_read: int = 0  # bytes_read carried over from the runs before a resume
    worker_max_rss_kb: int = 0
    worker_cpu_total: float = 0.0  # CPU seconds of all workers together (process time, not wall)
    coordinator_max_rss_kb: int = 0
    throttled_seconds: float = 0.0  # summed over workers: time spent waiting for the read budget
    io: dict[str, Any] = field(default_factory=dict)
    worker_losses: list[str] = field(default_factory=list)  # why each replaced worker went
    shards: list[dict[str, Any]] = field(default_factory=list)  # --shard-size: each shard's figures
    colour_conversions: dict[str, int] = field(default_factory=dict)  # etl.codec.colour_conversion kind -> images

    def take(self, progress: Progress) -> None:
        self.written += progress.written
        self.failures.extend(progress.failures)
        self.warnings.extend(progress.warnings)
        self.bytes_read += progress.bytes_read
        self.bytes_written += progress.bytes_written
        self.throttled_seconds += progress.throttled_seconds
        self.worker_max_rss_kb = max(self.worker_max_rss_kb, progress.worker_max_rss_kb)
        self.worker_cpu_total += progress.worker_cpu_seconds
        for stage, seconds in progress.stage_seconds.items():
            self.stage_seconds[stage] += seconds
        add_counts(self.colour_conversions, progress.colour_conversions)

    def finish(self, writer: WriterSummary, coordinator_cpu: float) -> None:
        self.wall_seconds = time.monotonic() - self.started
        self.coordinator_max_rss_kb = peak_rss_kb()
        self.writer = writer
        self.coordinator_cpu_seconds = coordinator_cpu

    @property
    def images_per_second(self) -> float:
        """Throughput of this run alone (records a resumed run found already written do not count)."""
        return (self.written - self.resumed_from) / self.wall_seconds if self.wall_seconds else 0.0

    def to_json(self, labels: list[str]) -> dict[str, Any]:
        per_label = self.writer.per_label if self.writer else {}
        return {
            "listed": self.listed,
            "written": self.written,
            "skipped": len(self.failures),
            "decoded_with_warnings": len(self.warnings),
            # no labels (etl imageset): the records per label number
            "per_class": {labels[i]: per_label.get(str(i), 0) for i in range(len(labels))} if labels else per_label,
            "skipped_files": [{"path": f.path, "reason": f.reason} for f in self.failures],
            "warning_files": [{"path": f.path, "reason": f.reason} for f in self.warnings],
            "colour_converted": dict(self.colour_conversions),
            "wall_seconds": round(self.wall_seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
            "bytes_read": self.bytes_read,
            "io": {
                **self.io,
                "read_mbps": round((self.bytes_read - self.resumed_bytes_read) / 1e6 / self.wall_seconds, 3)
                if self.wall_seconds else 0.0,
                "write_mbps": round(self.bytes_written / 1e6 / self.wall_seconds, 3) if self.wall_seconds else 0.0,
                "workers_throttled_seconds": round(self.throttled_seconds, 3),
                "writer_throttled_seconds": round(self.writer.throttled_seconds, 3) if self.writer else 0.0,
            },
            "workers": self.worker_count,
            "resumed_from": self.resumed_from,
            "workers_replaced": self.worker_losses,
            "worker_stage_cpu_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "worker_cpu_seconds": round(self.worker_cpu_total, 3),
            "coordinator_cpu_seconds": round(self.coordinator_cpu_seconds, 3),
            "peak_rss_mb": {
                "coordinator": round(self.coordinator_max_rss_kb / 1024, 1),
                "worker_max": round(self.worker_max_rss_kb / 1024, 1),
                "writer": round(self.writer.max_rss_kb / 1024, 1) if self.writer else 0.0,
            },
            "writer": _writer_json(self.writer),
            **({"shards": self.shards} if self.shards else {}),
        }


def _writer_json(summary: WriterSummary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {k: v for k, v in asdict(summary).items() if k != "sum_chunks"}  # for the pipeline, not the report


def write_report(path: Path, settings: dict[str, Any], labels: list[str], splits: list[SplitStats],
                 notes: list[str], resumed: bool = False, labels_sha256: str | None = None) -> dict[str, Any]:
    """labels_sha256: of the labels.txt the run wrote (none for etl imageset, which writes none)."""
    report = {
        "tool": "etl",
        "resumed": resumed,
        "settings": settings,
        "labels": len(labels),
        **({"labels_sha256": labels_sha256} if labels_sha256 else {}),
        "notes": notes,
        "splits": {s.name: s.to_json(labels) for s in splits},
    }
    tmp = path.with_suffix(".json.tmp")
    # Names are the file system's bytes; bytes that are not UTF-8 arrive as lone surrogates (Python's
    # surrogateescape), which are written as the JSON escapes \udcXX: the file stays UTF-8 JSON, and
    # json.load gives back the same name (os.fsencode turns it into the original bytes).
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8", errors="backslashreplace")
    tmp.replace(path)
    return report


def colour_notes(splits: list[SplitStats], channels: int) -> list[str]:
    """How many images of each split needed a colour conversion (CMYK, YCCK, transparency), by kind."""
    notes = []
    target = "RGB" if channels == 3 else "grey"
    for s in splits:
        kinds = sorted(s.colour_conversions.items(), key=lambda kind: (-kind[1], kind[0]))
        if not kinds:
            continue
        parts = ", ".join(plural(n, kind) for kind, n in kinds)
        white = " (transparency composited onto white)" if any(k.startswith("transparent") for k, _ in kinds) else ""
        total = sum(n for _, n in kinds)
        notes.append(f"{s.name}: {plural(total, 'image')} converted to {target}: {parts}{white}")
    return notes


def summary_text(out_dir: str, labels: list[str], splits: list[SplitStats], notes: list[str],
                 report: Path | None = None, command: str = "etl convert") -> str:
    """The one-screen summary printed at the end of a run."""
    lines = [f"{command}: {plural(len(labels), 'class')} -> {out_dir}" if labels else f"{command}: -> {out_dir}"]
    for s in splits:
        lines.append(f"  {s.name:5s} {s.written:>9,d} written  {len(s.failures):>6,d} skipped  "
                     f"{len(s.warnings):>6,d} with warnings  {_pace(s)}")
        if s.resumed_from:
            was = "was" if s.resumed_from == 1 else "were"
            lines.append(f"        resumed: {plural(s.resumed_from, 'record')} {was} already written")
        if s.worker_losses:
            lines.append(f"        {plural(len(s.worker_losses), 'worker process')} replaced, "
                         f"e.g. one {s.worker_losses[0]}")
        lines.extend(_reasons(s))
        lines.extend(_warned(s))
    lines.extend(f"  note: {n}" for n in notes)
    lines.append(f"  report: {report or Path(out_dir, 'report.json')}")
    return "\n".join(lines)


REASON_WIDTH = 110  # a reason group longer than this is cut at a word


def _pace(s: SplitStats) -> str:
    """Time, rate and workers; a split a resume found fully written has no rate to show."""
    if s.resumed_from and s.written == s.resumed_from:
        return "already complete, nothing left to write"
    return f"{s.wall_seconds:8.1f} s  {s.images_per_second:8.1f} img/s  ({plural(s.worker_count, 'worker')})"


def _reasons(s: SplitStats, shown: int = 5) -> list[str]:
    """The most common kinds of skip (a reason up to its first ': ' outside brackets), then a few examples."""
    lines = []
    counts = Counter(cut_at_word(before_colon(f.reason), REASON_WIDTH) for f in s.failures)
    for reason, n in counts.most_common(shown):
        lines.append(f"        skipped {n:>6,d}: {reason}")
    for f in s.failures[:shown]:
        lines.append(f"          e.g. {f.path}: {f.reason}")
    return lines


def _warned(s: SplitStats, shown: int = 5) -> list[str]:
    """The images written though libjpeg warned (a truncated or corrupt file), named as skips are, and the
    switch that leaves them out instead."""
    if not s.warnings:
        return []
    lines = [f"        warned  {len(s.warnings):>6,d}: written as libjpeg decoded them; --strict skips such images"]
    lines.extend(f"          e.g. {f.path}: {f.reason}" for f in s.warnings[:shown])
    return lines
