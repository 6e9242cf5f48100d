"""List sink: train.txt/val.txt (`<path> <label>` per record) and the split's log of skipped and warned files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from etl.checkpoint import skips_before, truncate_lines
from etl.messages import ChunkResult, Failure, SplitState


class ListFiles:
    """Lines are queued with their records, written and fsynced before the commit that holds them, and
    cut back to the last commit on resume."""

    def __init__(self, list_path: Path, skip_path: Path, prefix: str) -> None:
        self.list_path, self.skip_path, self.prefix = list_path, skip_path, prefix
        self.lines: list[str] = []
        self.skip_lines: list[str] = []

    def open(self, resume: bool, state: SplitState) -> tuple[list[Failure], list[Failure]]:
        """Start empty, or cut back to the commit `state` describes; returns its (skipped, warned) files."""
        skips = []
        if resume:
            truncate_lines(self.list_path, state.records)
            skips = skips_before(self.skip_path, state.chunks)
        else:
            self.list_path.write_text("")
            self.skip_path.write_text("")
        self.list_file = open(self.list_path, "a", encoding="utf-8", errors="surrogateescape")
        self.skip_file = open(self.skip_path, "a", encoding="utf-8", errors="surrogateescape")
        return ([Failure(e["path"], e["reason"]) for e in skips if e["kind"] == "skipped"],
                [Failure(e["path"], e["reason"]) for e in skips if e["kind"] == "warning"])

    def add(self, result: ChunkResult) -> None:
        prefix = self.prefix
        self.lines.extend(f"{prefix}{rec.path} {rec.label}\n" for rec in result.records)
        for kind, entries in (("skipped", result.failures), ("warning", result.warnings)):
            self.skip_lines.extend(json.dumps({"chunk": result.chunk_id, "kind": kind, "path": f.path,
                                               "reason": f.reason}) + "\n" for f in entries)

    @property
    def pending(self) -> bool:
        return bool(self.lines or self.skip_lines)

    def flush(self) -> None:
        """Write and fsync what is queued: it must be on disk before the commit that counts it."""
        for fh, lines in ((self.list_file, self.lines), (self.skip_file, self.skip_lines)):
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
            lines.clear()

    def close(self) -> None:
        self.list_file.close()
        self.skip_file.close()
