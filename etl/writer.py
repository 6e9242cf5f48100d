"""Writer: the one process that owns an LMDB environment; puts records in order, in batched transactions."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
from PIL import Image

from etl.datum import encode_blobproto
from etl.records import ChunkResult, Progress

INITIAL_MAP_SIZE = 1 << 30  # grows by doubling; the file is sparse, so this is not disk used
APPEND_LIMIT = 10**8  # '%08d' keys stay in byte order below this; append mode needs that


@dataclass(frozen=True)
class WriterSpec:
    """Where one split's database and list file go, and how often to commit."""

    db_path: str
    list_path: str
    source_root: str
    relative_paths: bool
    commit_every: int
    mean_dir: str | None  # the train writer also writes mean.binaryproto and mean.jpg


@dataclass
class WriterSummary:
    """The writer's last word: what it wrote and what writing cost."""

    written: int = 0
    per_label: dict[int, int] = field(default_factory=dict)
    commits: int = 0
    map_size: int = 0
    data_bytes: int = 0
    cpu_seconds: float = 0.0
    put_seconds: float = 0.0
    commit_seconds: float = 0.0


class LmdbWriter:
    """Keys '%08d_%d' % (write_index, label), values as given, committed every N records."""

    def __init__(self, spec: WriterSpec) -> None:
        self.spec = spec
        Path(spec.db_path).mkdir(parents=True, exist_ok=True)
        # metasync=False keeps ACI on a crash (LMDB may lose the last commit, never corrupt);
        # sync stays on, writemap stays off: both would risk corruption on power loss.
        self.env = lmdb.open(spec.db_path, map_size=INITIAL_MAP_SIZE, metasync=False,
                             max_dbs=0, readahead=False)
        self.list_file = open(spec.list_path, "w", encoding="utf-8", errors="surrogateescape")
        self.batch: list[tuple[bytes, bytes]] = []
        self.lines: list[str] = []
        self.summary = WriterSummary()
        self.mean_sum: np.ndarray | None = None

    def add(self, result: ChunkResult) -> None:
        t0 = time.perf_counter()
        for rec in result.records:
            index = self.summary.written
            self.batch.append((b"%08d_%d" % (index, rec.label), rec.value))
            self.lines.append(f"{self._list_path(rec.path)} {rec.label}\n")
            self.summary.written += 1
            self.summary.data_bytes += len(rec.value)
            self.summary.per_label[rec.label] = self.summary.per_label.get(rec.label, 0) + 1
        if result.pixel_sum is not None:
            if self.mean_sum is None:
                self.mean_sum = np.zeros(result.pixel_sum.shape, dtype=np.int64)
            self.mean_sum += result.pixel_sum
        self.summary.put_seconds += time.perf_counter() - t0
        if len(self.batch) >= self.spec.commit_every:
            self.commit()

    def _list_path(self, rel: str) -> str:
        return rel if self.spec.relative_paths else os.path.join(os.path.abspath(self.spec.source_root), rel)

    def commit(self) -> None:
        if not self.batch:
            return
        t0 = time.perf_counter()
        append = self.summary.written < APPEND_LIMIT
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    txn.cursor().putmulti(self.batch, dupdata=False, overwrite=True, append=append)
                break
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
        self.list_file.writelines(self.lines)
        self.list_file.flush()
        self.batch.clear()
        self.lines.clear()
        self.summary.commits += 1
        self.summary.commit_seconds += time.perf_counter() - t0

    def close(self) -> WriterSummary:
        self.commit()
        self.env.sync(True)
        self.summary.map_size = self.env.info()["map_size"]
        self.env.close()
        self.list_file.close()
        if self.spec.mean_dir is not None and self.mean_sum is not None and self.summary.written:
            write_mean(self.spec.mean_dir, self.mean_sum, self.summary.written)
        return self.summary


def write_mean(out_dir: str, pixel_sum: np.ndarray, count: int) -> None:
    """mean.binaryproto (CHW, BGR, float) and mean.jpg (RGB), as DIGITS writes them."""
    mean_hwc = pixel_sum.astype(np.float64) / count
    channels = mean_hwc.shape[2]
    planes = mean_hwc[:, :, ::-1] if channels == 3 else mean_hwc
    Path(out_dir, "mean.binaryproto").write_bytes(encode_blobproto(planes.transpose(2, 0, 1).astype(np.float32)))
    image = np.clip(np.rint(mean_hwc), 0, 255).astype(np.uint8)
    Image.fromarray(image if channels == 3 else image[:, :, 0]).save(Path(out_dir, "mean.jpg"), quality=90)


def writer_main(spec: WriterSpec, result_q: Any, progress_q: Any) -> None:
    """The writer's life: reorder chunks, write them in order, report each, then its summary."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    writer = LmdbWriter(spec)
    pending: dict[int, ChunkResult] = {}  # the reorder buffer; the coordinator bounds its size
    next_chunk = 0
    while (result := result_q.get()) is not None:
        pending[result.chunk_id] = result
        while next_chunk in pending:
            ready = pending.pop(next_chunk)
            writer.add(ready)
            progress_q.put(Progress(ready.chunk_id, len(ready.records), ready.failures, ready.warnings,
                                    ready.bytes_read, ready.stage_seconds))
            next_chunk += 1
    summary = writer.close()
    summary.cpu_seconds = time.process_time()
    progress_q.put(summary)
