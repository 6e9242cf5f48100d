"""Pipeline: the coordinator that wires sources, workers and writer together and runs each split."""

from __future__ import annotations

import multiprocessing as mp
import queue
import shutil
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from etl.records import Progress, Task
from etl.settings import Settings, UsageError
from etl.sources import Plan, Split, plan
from etl.stats import SplitStats, summary_text, write_report
from etl.workers import WorkerPool, WorkSpec
from etl.writer import WriterSpec, WriterSummary, writer_main

DATASET_FILES = ("labels.txt", "train.txt", "val.txt", "mean.binaryproto", "mean.jpg", "report.json")
DATASET_DIRS = ("train_db", "val_db")
POLL_SECONDS = 0.2
# fork starts workers ~0.3 s sooner than spawn (no re-import of numpy, cv2, Pillow): it is safe here
# because the coordinator holds no LMDB environment and runs no threads when it starts them.
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"


class PipelineError(Exception):
    """The run could not finish (a process died); the message says what happened."""


def prepare_output(s: Settings) -> Path:
    """Create the output folder; never silently replace a dataset already there."""
    out = Path(s.out_dir)
    existing = [n for n in DATASET_FILES + DATASET_DIRS if (out / n).exists()]
    if existing and not s.overwrite:
        raise UsageError(f"{out} already holds a dataset ({existing[0]}): pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    for name in existing:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return out


def convert(s: Settings, progress: bool = True) -> dict[str, Any]:
    """Build every database of the dataset; returns the report (also written to report.json)."""
    job = plan(s)
    out = prepare_output(s)
    (out / "labels.txt").write_text("".join(f"{name}\n" for name in job.labels), encoding="utf-8",
                                    errors="surrogateescape")
    done: list[SplitStats] = []
    for split in job.splits:
        done.append(run_split(split, s, out, progress))
    if not any(sp.name == "val" for sp in job.splits):
        (out / "val.txt").write_text("")
    report = write_report(str(out), s.output_settings(), job.labels, done, job.notes)
    if progress:
        print(summary_text(str(out), job.labels, done, job.notes))
    return report


def chunks(split: Split, size: int) -> list[Task]:
    items = split.items
    return [Task(k, tuple(items[start:start + size])) for k, start in enumerate(range(0, len(items), size))]


def run_split(split: Split, s: Settings, out: Path, progress: bool) -> SplitStats:
    """Workers convert chunks in parallel; the writer puts them in order; we feed and watch."""
    ctx = mp.get_context(START_METHOD)
    workers = max(1, min(s.worker_count, len(split.items) // s.chunk_size + 1))
    window = 4 * workers + 4  # chunks issued but not yet written: bounds the writer's reorder buffer
    task_q, result_q, progress_q = ctx.Queue(maxsize=2 * workers), ctx.Queue(maxsize=window), ctx.Queue()
    wspec = WriterSpec(str(out / f"{split.name}_db"), str(out / f"{split.name}.txt"), split.root,
                       s.relative_paths, s.commit_every, str(out) if split.name == "train" else None)
    stats = SplitStats(split.name, len(split.items), worker_count=workers)
    cpu0 = time.process_time()
    writer = ctx.Process(target=writer_main, args=(wspec, result_q, progress_q), name="etl-writer", daemon=True)
    writer.start()
    pool = WorkerPool(ctx, workers, WorkSpec.for_split(s, split.name, split.root), task_q, result_q)
    bar = tqdm(total=len(split.items), desc=split.name, unit="img", disable=not progress, smoothing=0.05)
    try:
        _feed_and_watch(chunks(split, s.chunk_size), window, task_q, progress_q, pool, writer, stats, bar)
        pool.stop()
        result_q.put(None)
        summary = _await_summary(progress_q, writer)
        writer.join()
    finally:
        bar.close()
        pool.kill()
        if writer.is_alive():
            writer.kill()
    stats.finish(summary, time.process_time() - cpu0)
    return stats


def _feed_and_watch(tasks: list[Task], window: int, task_q: Any, progress_q: Any, pool: WorkerPool,
                    writer: Any, stats: SplitStats, bar: tqdm) -> None:
    issued = written = 0
    while written < len(tasks):
        while issued < len(tasks) and issued - written < window:
            try:
                task_q.put_nowait(tasks[issued])
            except queue.Full:
                break
            issued += 1
        try:
            msg: Progress = progress_q.get(timeout=POLL_SECONDS)
        except queue.Empty:
            _check_alive(pool, writer)
            continue
        stats.take(msg)
        written += 1
        bar.update(msg.written + len(msg.failures))
        if msg.failures:
            bar.set_postfix(skipped=len(stats.failures), refresh=False)


def _check_alive(pool: WorkerPool, writer: Any) -> None:
    if writer.exitcode is not None:
        raise PipelineError(f"the LMDB writer process exited unexpectedly (exit code {writer.exitcode})")
    dead = pool.dead()
    if dead:
        raise PipelineError(f"worker process {dead[0].name} exited unexpectedly (exit code {dead[0].exitcode})")


def _await_summary(progress_q: Any, writer: Any) -> WriterSummary:
    while True:
        try:
            msg = progress_q.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if writer.exitcode is not None:
                raise PipelineError(f"the LMDB writer exited before finishing (exit code {writer.exitcode})") from None
            continue
        if isinstance(msg, WriterSummary):
            return msg


def describe(job: Plan) -> str:
    return ", ".join(f"{sp.name} {len(sp.items):,d}" for sp in job.splits)
