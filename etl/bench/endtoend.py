"""End to end: `etl convert` as a user runs it against the Pool + Pillow / + OpenCV baselines, LMDB written."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etl.baselines import opencv_kernel, pil_kernel, run_pool_baseline
from etl.bench.cold import prepare
from etl.bench.engine import labelled_files

REPO = Path(__file__).resolve().parents[2]  # where `python -m etl` runs from


def end_to_end(tree: Path, work: Path, workers: int, rounds: int = 2, archive: Path | None = None,
               cold: bool = False) -> dict[str, dict[str, Any]]:
    """Each contender `rounds` times, interleaved, the page cache warmed (or, cold, emptied of the corpus)
    before every run; the best run counts (these shared machines drift by 10-20% from run to run).
    archive: the --src archive the tree was written from; `etl convert` also runs on it."""
    items = labelled_files(tree)
    files = [Path(p) for p, _ in items]
    contenders: dict[str, Callable[[Path], dict[str, Any]]] = {
        "Pool + Pillow (DIGITS kernel)": lambda db: run_pool_baseline(pil_kernel, items, workers, db),
        "Pool + OpenCV (Caffe kernel)": lambda db: run_pool_baseline(opencv_kernel, items, workers, db),
        "etl convert": lambda db: run_etl(tree, db, workers),
    }
    if archive is not None:
        contenders["etl convert (from the archive)"] = lambda db: run_etl(archive, db, workers)
    best: dict[str, dict[str, Any]] = {}
    for r in range(rounds):
        for k, (name, run) in enumerate(contenders.items()):
            prepare(files if "archive" not in name else _tar_files(archive), cold)
            result = run(work / f"e2e_{k}_{r}")
            if name not in best or result["images_per_second"] > best[name]["images_per_second"]:
                best[name] = result
    return best


def _tar_files(archive: Path | None) -> list[Path]:
    assert archive is not None
    return sorted(archive.iterdir()) if archive.is_dir() else [archive]


def run_etl(tree: Path, out: Path, workers: int, chunk_size: int = 64, queue_depth: int = 2,
            read_ahead: int = 8) -> dict[str, Any]:
    """`etl convert` in its own process, as a user runs it, so its memory and CPU are its own."""
    subprocess.run([sys.executable, "-m", "etl", "convert", str(tree), str(out), "--val-pct", "0", "--quiet",
                    "--overwrite", "--workers", str(workers), "--chunk-size", str(chunk_size),
                    "--queue-depth", str(queue_depth), "--read-ahead", str(read_ahead)],
                   check=True, cwd=REPO)
    split = json.loads((out / "report.json").read_text())["splits"]["train"]
    seconds = split["wall_seconds"]  # from its workers' start, as the baselines' clocks run from their Pool's
    # forkserver children are not reaped by us, so rusage would miss them: add up what each process measured
    cpu = split["worker_cpu_seconds"] + split["coordinator_cpu_seconds"] + split["writer"]["cpu_seconds"]
    return {"images": split["written"], "seconds": seconds, "images_per_second": split["written"] / seconds,
            "cpu_seconds": cpu, "report": split}
