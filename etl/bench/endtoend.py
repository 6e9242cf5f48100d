"""End to end: `etl convert` as a user runs it against the Pool + Pillow / + OpenCV baselines, LMDB written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etl.baselines import opencv_kernel, pil_kernel, run_pool_baseline
from etl.bench.cold import prepare
from etl.bench.engine import labelled_files

REPO = Path(__file__).resolve().parents[2]  # where `python -m etl` runs from
# /proc/stat's first line, in order; what the machine's CPUs did during a run, whoever did it
MACHINE_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

# what every contender imports, loaded before each run so that its libraries are in the page cache, as after any
# earlier run of a real conversion
LOAD_MODULES = "import cv2, lmdb, numpy, PIL.Image, turbojpeg, etl.cli, etl.pipeline, etl.workers, etl.writer"

Runs = dict[str, dict[str, dict[str, Any]]]  # regime ("warm", "cold") -> contender -> its median run


def end_to_end(tree: Path, work: Path, workers: int, rounds: int = 3, archive: Path | None = None,
               regimes: tuple[str, ...] = ("warm",)) -> Runs:
    """Each contender `rounds` times in each regime, all interleaved (round by round, contender by contender,
    warm then cold), so that the drift of a shared machine falls on every figure alike. Before each run the
    page cache is warmed with the corpus, or (cold) emptied of it, and the programs' modules are loaded once
    in a throw-away process (cold means the input, not Python). The median run counts (of an even number,
    the slower middle one), with its machine CPU accounting (`machine`); every run's speed is kept
    (`runs_images_per_second`). archive: the --src archive the tree was written from; `etl convert` also runs
    on it."""
    items = labelled_files(tree)
    files = [Path(p) for p, _ in items]
    contenders: dict[str, Callable[[Path], dict[str, Any]]] = {
        "Pool + Pillow (DIGITS kernel)": lambda db: run_pool_baseline(pil_kernel, items, workers, db),
        "Pool + OpenCV (Caffe kernel)": lambda db: run_pool_baseline(opencv_kernel, items, workers, db),
        "etl convert": lambda db: run_etl(tree, db, workers),
    }
    if archive is not None:
        contenders["etl convert (from the archive)"] = lambda db: run_etl(archive, db, workers)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {r: {name: [] for name in contenders} for r in regimes}
    for _ in range(rounds):
        for name, run in contenders.items():
            for regime in regimes:
                prepare(files if "archive" not in name else _tar_files(archive), regime == "cold")
                load_programs()
                before = machine_cpu()
                result = run(work / "e2e")
                result["machine"] = {f: round(b - a, 2) for f, a, b in zip(MACHINE_FIELDS, before, machine_cpu(),
                                                                        strict=True)}
                runs[regime][name].append(result)
                shutil.rmtree(work / "e2e", ignore_errors=True)
    return {regime: {name: median_run(done) for name, done in by_name.items()} for regime, by_name in runs.items()}


def load_programs() -> None:
    """Every contender's modules read once in a throw-away process: after a drop_caches, cold means the input."""
    subprocess.run([sys.executable, "-c", LOAD_MODULES], check=True, cwd=REPO)


def median_run(done: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median speed (of an even count, the slower middle one: a run that happened, whose report
    and CPU figures belong to it), with every run's speed beside it, in the order they ran."""
    middle = sorted(done, key=lambda d: d["images_per_second"])[(len(done) - 1) // 2]
    return {**middle, "runs_images_per_second": [round(d["images_per_second"], 1) for d in done]}


def machine_cpu() -> list[float]:
    """Seconds each CPU state has taken so far, summed over the machine's CPUs (/proc/stat; Linux only)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return [0.0] * len(MACHINE_FIELDS)
    hz = os.sysconf("SC_CLK_TCK")
    return [int(v) / hz for v in first[1:1 + len(MACHINE_FIELDS)]]


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
