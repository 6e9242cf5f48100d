"""`etl mean` on every core against one process decoding every record with cv2.imdecode and summing.

    python benchmarks/mean_bench.py [--src DIR --repeat K | --generate N] [--workers N] [--rounds 3] [--out FILE]

The database: etl converts the corpus (the files in DIR copied --repeat times, or N generated ImageNet-like
images; default --generate 3000) with its defaults (224x224 JPEG q90, no val split). It is read once before
the timed runs, so every run finds it in the page cache. Each round times, in this process: the baseline
(py-lmdb cursor, etl's Datum parser, cv2.imdecode(IMREAD_UNCHANGED), numpy sum into uint64), `etl mean`
with one worker (in-process), and `etl mean` with --workers; the best round counts. The sums must agree
exactly, or the bench stops. --out writes the table with the command line at its top.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import lmdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
cv2.setNumThreads(1)  # the baseline is one process, one thread; and no OpenCV pool is running at a fork

from etl.bench.corpus import build_corpus  # noqa: E402
from etl.datum import decode_datum  # noqa: E402
from etl.dbmean import compute_mean  # noqa: E402
from etl.settings import usable_cores  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def opencv_baseline(db: Path) -> tuple[np.ndarray, int]:
    """The plain way: one process, cv2.imdecode per record, an exact uint64 sum (CHW, as the blob)."""
    env = lmdb.open(str(db), readonly=True, lock=False)
    total: np.ndarray | None = None
    count = 0
    with env.begin() as txn:
        for _, value in txn.cursor():
            datum = decode_datum(value)
            img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
            img = img if img.ndim == 3 else img[:, :, None]
            if total is None:
                total = np.zeros(img.shape, np.uint64)
            np.add(total, img, out=total)
            count += 1
    env.close()
    assert total is not None
    return np.ascontiguousarray(total.transpose(2, 0, 1)), count


Run = Callable[[], tuple[np.ndarray, int]]


def best_of(rounds: int, runs: dict[str, Run]) -> dict[str, tuple[float, np.ndarray, int]]:
    """Each run once per round, in turn (a spell of load from elsewhere hits them alike); the best time."""
    best: dict[str, tuple[float, np.ndarray, int]] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            total, count = run()
            seconds = time.perf_counter() - t0
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, total, count)
    return best


def build_db(work: Path, src: str | None, generate: int, repeat: int, workers: int) -> Path:
    """etl convert in its own process, as a user runs it: this one then forks etl mean's workers having run
    no OpenCV thread pool (etl.procs.mp_context says why that matters)."""
    tree = build_corpus(work, src, generate, repeat)
    out = work / "ds"
    subprocess.run([sys.executable, "-m", "etl", "convert", str(tree), str(out), "--val-pct", "0", "--quiet",
                    "--workers", str(workers)], check=True, cwd=REPO)
    db = out / "train_db"
    (db / "data.mdb").read_bytes()  # into the page cache: every run reads it warm
    return db


def measure(db: Path, workers: int, rounds: int) -> list[str]:
    def etl_mean(n: int) -> Run:
        def run() -> tuple[np.ndarray, int]:
            result = compute_mean(str(db), n, inprocess_below=0)  # processes however small the database
            return result.total, result.count

        return run

    runs = {"one process, cv2.imdecode + numpy sum": lambda: opencv_baseline(db), "etl mean --workers 1": etl_mean(1),
            f"etl mean --workers {workers}": etl_mean(workers)}
    timed = best_of(rounds, runs)
    base_seconds, base_total, _ = timed["one process, cv2.imdecode + numpy sum"]
    lines = ["| run | records | seconds | records/s | speed vs the baseline |", "|---|---|---|---|---|"]
    for name, (seconds, total, count) in timed.items():
        if not np.array_equal(total, base_total):
            sys.exit(f"{name}: its sum differs from the baseline's")
        lines.append(f"| {name} | {count:,d} | {seconds:.2f} | {count / seconds:.0f} | {base_seconds / seconds:.2f}x |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--src", help="a folder of real JPEGs (a flat ImageNet folder is sorted by wnid)")
    src.add_argument("--generate", type=int, default=3000, help="generated images when no --src (default 3000)")
    ap.add_argument("--repeat", type=int, default=1, help="copies of the --src files")
    ap.add_argument("--workers", type=int, default=usable_cores(), help="etl mean's workers (default: every core)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the best counts (default 3)")
    ap.add_argument("--out", help="also write the table here, the command line at its top")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]  # before this bench's own conversion adds to it
    with tempfile.TemporaryDirectory(prefix="etl-mean-bench-") as tmp:
        db = build_db(Path(tmp), args.src, args.generate, args.repeat, args.workers)
        header = [f"# python benchmarks/mean_bench.py {shlex.join(sys.argv[1:] if argv is None else argv)}",
                  f"# {usable_cores()} usable cores ({platform.processor() or platform.machine()}), "
                  f"1-minute load {load:.2f} at the start, best of {args.rounds}"]
        text = "\n".join(header + measure(db, args.workers, args.rounds))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
