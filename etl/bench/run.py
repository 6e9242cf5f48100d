"""Run: `etl bench` and `etl tune` from corpus to figures, in a scratch folder; JSON and chart into `out`."""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Any

import cv2

from etl.bench.ceiling import writer_ceiling
from etl.bench.corpus import build_corpus, corpus_files, is_archive
from etl.bench.endtoend import end_to_end
from etl.bench.engine import usable_cores
from etl.bench.kernels import kernels, limit
from etl.bench.memory import listing_memory
from etl.bench.report import serial_figures, write_json
from etl.bench.stages import stages
from etl.bench.sweep import plot, recommend, sweep
from etl.pipeline import sigterm_as_interrupt


def _no_opencv_threads() -> None:
    # The limit and the Pool baselines fork from this process: OpenCV's thread pool must never
    # exist here, or a forked child calling cv2 deadlocks on a lock held by a thread it lacks.
    cv2.setNumThreads(1)


def run_bench(src: str | None, generate: int, repeat: int, workers: int, out: Path,
              list_counts: tuple[int, int] = (10_000, 200_000), kernel_sample: int = 300,
              ceiling_records: int = 40_000, cold: bool = False, rounds: int = 3) -> dict[str, Any]:
    """cold: the end-to-end runs also from an emptied page cache, interleaved with the warm ones; rounds: runs
    of each (the median counts)."""
    _no_opencv_threads()
    # SIGTERM unwinds as Ctrl-C does, so the scratch folder (a copy of the corpus, databases) is removed
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="etl-bench-") as tmp:
        work = Path(tmp)
        tree = build_corpus(work, src, generate, repeat)  # refuses a corpus without images before out exists
        out.mkdir(parents=True, exist_ok=True)
        files = corpus_files(tree)
        blobs = [p.read_bytes() for p in files]
        res: dict[str, Any] = {"files": len(files), "workers": workers, "cores": usable_cores()}
        stride = max(1, len(files) // kernel_sample)  # spread over the classes, not the first few folders
        res["kernels"] = kernels(blobs[::stride][:kernel_sample])
        res["stages"] = stages(files[::stride][:kernel_sample], work)
        gc.collect()
        res["limit_images_per_second"] = limit(blobs, workers)
        del blobs
        archive = Path(src).resolve() if src is not None and is_archive(src) else None
        runs = end_to_end(tree, work, workers, rounds, archive, ("warm", "cold") if cold else ("warm",))
        res["rounds"] = rounds
        res["end_to_end"] = runs["warm"]
        if cold:
            res["end_to_end_cold"] = runs["cold"]
        res["ceiling"] = writer_ceiling(work, total=ceiling_records)
        res["serial"] = serial_figures(res["end_to_end"]["etl convert"], res["ceiling"])
        res["memory"] = {**listing_memory(work, list_counts),
                         "peak_rss_mb": res["end_to_end"]["etl convert"]["report"]["peak_rss_mb"]}
    write_json(out / "bench.json", res, default=float)
    return res


def run_tune(src: str | None, generate: int, repeat: int, max_workers: int, out: Path,
             cold: bool = False, rounds: int = 1) -> dict[str, Any]:
    """cold: every run from an emptied page cache (the regime of a real conversion); rounds: runs of each
    point, the median counts."""
    _no_opencv_threads()
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="etl-tune-") as tmp:  # as run_bench's
        work = Path(tmp)
        tree = build_corpus(work, src, generate, repeat)  # refuses a corpus without images before out exists
        out.mkdir(parents=True, exist_ok=True)
        points = sweep(tree, work, list(range(1, max_workers + 1)), [16, 64, 256], [1, 2, 4], [0, 2, 4], cold,
                       rounds)
    best = recommend(points)
    plotted = plot(points, out / "sweep.png")
    res = {"points": [p.__dict__ for p in points], "recommended": best.__dict__,
           "page_cache": "cold" if cold else "warm", "rounds": rounds}
    write_json(out / "tune.json", res)
    return {**res, "plotted": plotted}
