"""Ceiling: the writer's serial ceiling: stand-in producers send etl's writer ready chunks as fast as they can."""

from __future__ import annotations

import os
import pickle
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from multiprocessing.connection import Client, Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from etl.bench.kernels import SIZE
from etl.datum import encode_datum
from etl.layout import CHECKPOINT_DIR
from etl.messages import ChunkResult, Record, ResultsLink, WriterSummary
from etl.procs import mp_context, widen
from etl.runners.writer_process import WriterProcess
from etl.writer import WriterSpec

RECORD_BYTES = 17_000  # a 224x224 q90 JPEG of ImageNet averages ~17 KB
START_SECONDS = 60  # for the ceiling's stand-in workers to start and connect


def _writer_run(ctx: BaseContext, out: Path, n_chunks: int,
                feed: Callable[[ResultsLink], float]) -> tuple[WriterSummary, float]:
    """etl's writer on a fresh database at `out`, fed until it reports `n_chunks` chunks written, then told to
    finish: its summary and the seconds from the clock's start to that summary. `feed(link)` starts the producers
    (they connect at `link`, as workers do) and returns, once they are ready, the perf_counter the clock starts at."""
    Path(out, CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    written: list[int] = []
    writer = WriterProcess(ctx, WriterSpec("train", str(out), "", 1000, False, mean=None),
                           lambda progress: written.append(progress.chunk_id))
    try:
        writer.ready()
        t0 = feed(writer.link)
        while len(written) < n_chunks:
            writer.message()
        writer.send_done(complete=True)
        summary = writer.until(WriterSummary)
        seconds = time.perf_counter() - t0
        writer.proc.join()
    finally:
        writer.release()
    return summary, seconds


def _producer(link: ResultsLink, chunk_ids: list[int], records: int, start: Any,
              record_bytes: int = RECORD_BYTES) -> None:
    """A stand-in worker: connects to the writer as workers do and sends ready chunks, pickled; each record
    a Datum holding `record_bytes` of random data. The records of a chunk are distinct objects: pickle stores
    an object it meets twice once, so one value shared by a chunk's records would send one record's bytes
    per chunk, not the chunk's."""
    values = [encode_datum(3, SIZE, SIZE, os.urandom(record_bytes), 1, True) for _ in range(records)]
    crcs = [zlib.crc32(value) for value in values]  # as a worker computes them
    conn: Connection = Client(link.address, family="AF_UNIX", authkey=link.authkey)
    widen(conn)
    start.wait(timeout=START_SECONDS)  # all connected and ready: the clock measures the writer, not start-up
    for cid in chunk_ids:
        result = ChunkResult(cid, [Record(cid * records + i, 1, f"x/{cid}_{i}.jpg", values[i], crcs[i])
                                   for i in range(records)])
        conn.send_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    conn.close()


def writer_ceiling(work: Path, total: int = 40_000, producers: int = 4, per_chunk: int = 64,
                   rounds: int = 3, record_bytes: int = RECORD_BYTES) -> dict[str, float]:
    """Records/s the writer sustains: producers send it ready chunks (records holding `record_bytes` of data)
    as fast as they can, as workers do. The best of `rounds` runs, each into a fresh database (these shared
    machines drift from run to run)."""
    runs = []
    for r in range(rounds):
        runs.append(_ceiling_run(work / f"ceiling{r}", total // per_chunk, producers, per_chunk, record_bytes))
        shutil.rmtree(work / f"ceiling{r}")  # 0.7 GB each: free the disk and the page cache
    return max(runs, key=lambda run: run["records_per_second"])


def _ceiling_run(out: Path, n_chunks: int, producers: int, per_chunk: int,
                 record_bytes: int = RECORD_BYTES) -> dict[str, float]:
    ctx = mp_context()
    procs: list[BaseProcess] = []
    summary, seconds = _writer_run(ctx, out, n_chunks, lambda link: _start_producers(
        ctx, link, procs, n_chunks, per_chunk, producers, record_bytes))
    for p in procs:
        p.join()
    records = n_chunks * per_chunk
    return {"records": records, "record_bytes": record_bytes, "producers": producers,
            "records_per_second": records / seconds, "mb_per_second": records * record_bytes / 1e6 / seconds,
            "writer_cpu_seconds_per_record": summary.cpu_seconds / records}


def _start_producers(ctx: BaseContext, link: ResultsLink, procs: list[BaseProcess], n_chunks: int, per_chunk: int,
                     producers: int, record_bytes: int = RECORD_BYTES) -> float:
    """Starts the producers (into `procs`), each with every `producers`-th chunk; once all are connected and
    ready, the perf_counter the clock starts at."""
    start = ctx.Barrier(producers + 1)
    procs += [ctx.Process(target=_producer,
                          args=(link, list(range(k, n_chunks, producers)), per_chunk, start, record_bytes))
              for k in range(producers)]
    for p in procs:
        p.start()
    try:
        start.wait(timeout=START_SECONDS)
    except threading.BrokenBarrierError:
        for p in procs:
            p.kill()
        raise RuntimeError(f"the ceiling's stand-in workers did not all start within {START_SECONDS} s") from None
    return time.perf_counter()


def concurrent_ceiling(work: Path, writers: int, total: int = 40_000, producers: int = 2, per_chunk: int = 64,
                       record_bytes: int = RECORD_BYTES) -> dict[str, float]:
    """Records/s of `writers` writer processes at once, each into its own database and fed by its own
    `producers`, as `--shard-writers` runs shards: `total` records in all, over the longest writer's time."""
    runs: list[dict[str, float]] = []

    def one(k: int) -> None:
        runs.append(_ceiling_run(work / f"writers{writers}_{k}", total // writers // per_chunk, producers, per_chunk,
                                 record_bytes))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(writers):
        shutil.rmtree(work / f"writers{writers}_{k}", ignore_errors=True)
    if len(runs) != writers:
        raise RuntimeError("a writer of the concurrent ceiling failed")
    records = sum(r["records"] for r in runs)
    seconds = max(r["records"] / r["records_per_second"] for r in runs)
    return {"writers": writers, "records": records, "records_per_second": records / seconds,
            "mb_per_second": records * record_bytes / 1e6 / seconds,
            "writer_cpu_seconds_per_record": sum(r["writer_cpu_seconds_per_record"] * r["records"] for r in runs)
            / records}
