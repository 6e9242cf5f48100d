"""`etl imageset` against the writer's ceiling (--encoded, no resize) and against Pool + OpenCV (256x256 raw).

    python benchmarks/imageset_bench.py [--src DIR [--repeat K] | --generate N] [--workers N] [--rounds 3]
                                        [--cold] [--out FILE]

The corpus: the files in DIR copied --repeat times (default 12: 3,000 files from the 250 of the ImageNet
sample) as distinct files into class folders, or N generated ImageNet-like images (default --generate 3000
when no --src), and a Caffe list file of them (`class/file label`, in path order). Each round runs, in
alternating order, every contender once; the best of --rounds counts:

  etl imageset --encoded          python -m etl imageset --encoded --quiet --workers N ROOT/ LIST DB: records
                                  hold the files' own bytes, so the run is reading and LMDB writing only
  writer ceiling                  etl.bench.ceiling.writer_ceiling: N stand-in producers push ready chunks of
                                  64 records to etl's real writer process, records as large as the corpus'
                                  mean file; the clock starts once they are connected (no start-up, no input)
  etl imageset --resize 256       python -m etl imageset --resize_width=256 --resize_height=256 --quiet
                                  --workers N ROOT/ LIST DB: raw records, as Caffe's create_imagenet.sh
  Pool + OpenCV --resize 256      etl.baselines.run_imageset_baseline in its own process: Pool(N) workers
                                  cv2.imread, cv2.resize INTER_LINEAR, build the raw Datum; the parent writes
                                  keys '%08d_%s' and commits every 1000

"command s" is the whole command as a user waits for it, interpreter start-up included, timed here;
"engine s" is the time the run reports itself (etl: the split's wall_seconds in report.json; the baseline:
from its first line to its last sync), without start-up. Each run is checked: as many records as list
lines, and the first --encoded record's data are its file's bytes, the first raw one 3x256x256. The last
column lists every round's command seconds, so that a round slowed by other work on the machine shows.

Before each run (not the ceiling's, which reads no input) the corpus is read once into the page cache; with
--cold it is dropped instead (as root: /proc/sys/vm/drop_caches; otherwise posix_fadvise per file), then the
programs' modules are imported once in a throw-away process, so that cold means the input, not Python.
--out writes the table with the command line at its top.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl.bench.ceiling import writer_ceiling  # noqa: E402
from etl.bench.cold import evict  # noqa: E402
from etl.bench.corpus import build_corpus, corpus_files, warm  # noqa: E402
from etl.bench.endtoend import load_programs  # noqa: E402
from etl.datum import decode_datum  # noqa: E402
from etl.layout import CHECKPOINT_DIR, REPORT  # noqa: E402
from etl.settings import usable_cores  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIDE = 256
PER_CHUNK = 64  # etl's default chunk size
BASELINE = ("import json, sys; from pathlib import Path; from etl.baselines import run_imageset_baseline; "
            "root, listed, db, workers = sys.argv[1:]; "
            "items = [(p, int(lb)) for p, lb in (line.rsplit(None, 1) for line in open(listed) if line.strip())]; "
            "print(json.dumps(run_imageset_baseline(root, items, int(workers), Path(db), {side}, {side})))")


class Corpus:
    def __init__(self, work: Path, src: str | None, generate: int, repeat: int) -> None:
        self.root = build_corpus(work, src, generate, repeat)
        self.files = corpus_files(self.root)
        labels = {name: i for i, name in enumerate(sorted({p.parent.name for p in self.files}))}
        self.lines = [(p.relative_to(self.root).as_posix(), labels[p.parent.name]) for p in self.files]
        self.listfile = work / "train.txt"
        self.listfile.write_text("".join(f"{path} {label}\n" for path, label in self.lines), encoding="utf-8")
        self.bytes = sum(p.stat().st_size for p in self.files)

    @property
    def mean_bytes(self) -> int:
        return round(self.bytes / len(self.files))


class Run:
    """One contender's run: images (or records), the command's seconds, the engine's own seconds."""

    def __init__(self, images: int, seconds: float, engine_seconds: float, mb: float) -> None:
        self.images, self.seconds, self.engine_seconds, self.mb = images, seconds, engine_seconds, mb
        self.rounds: list[float] = []  # every round's command seconds, in round order


def records(db: Path) -> tuple[int, bytes, bytes]:
    """The record count, and the first record's key and value."""
    env = lmdb.open(str(db), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            count = txn.stat()["entries"]
            key, value = next(iter(txn.cursor()))
    finally:
        env.close()
    return count, bytes(key), bytes(value)


def check(name: str, db: Path, corpus: Corpus, encoded: bool) -> None:
    """As many records as list lines, keyed '%08d_%s' by line; the first one's data as expected."""
    count, key, value = records(db)
    path = corpus.lines[0][0]
    if count != len(corpus.lines):
        sys.exit(f"{name}: {count} records for {len(corpus.lines)} list lines")
    if key != b"%08d_%s" % (0, path.encode()):
        sys.exit(f"{name}: the first key is {key!r}, not line 0's")
    datum = decode_datum(value)
    if encoded and datum.data != (corpus.root / path).read_bytes():
        sys.exit(f"{name}: the first record's data are not the bytes of {path}")
    if not encoded and (datum.channels, datum.height, datum.width, len(datum.data)) != (3, SIDE, SIDE, 3 * SIDE * SIDE):
        sys.exit(f"{name}: the first record is {datum.channels}x{datum.height}x{datum.width}, not 3x{SIDE}x{SIDE}")


def etl_imageset(flags: list[str], encoded: bool) -> Callable[[Corpus, Path, int], Run]:
    def run(corpus: Corpus, db: Path, workers: int) -> Run:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "etl", "imageset", *flags, "--quiet", f"--workers={workers}",
                        f"{corpus.root}/", str(corpus.listfile), str(db)], check=True, cwd=REPO)
        seconds = time.perf_counter() - t0
        split = json.loads((db / CHECKPOINT_DIR / REPORT).read_text())["splits"]["train"]
        check(f"etl imageset {' '.join(flags)}", db, corpus, encoded)
        return Run(split["written"], seconds, split["wall_seconds"], corpus.bytes / 1e6)

    return run


def pool_opencv(corpus: Corpus, db: Path, workers: int) -> Run:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BASELINE.format(side=SIDE), str(corpus.root), str(corpus.listfile),
                           str(db), str(workers)], check=True, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    res = json.loads(proc.stdout)
    check("Pool + OpenCV", db, corpus, encoded=False)
    return Run(res["images"], seconds, res["seconds"], corpus.bytes / 1e6)


def ceiling(corpus: Corpus, db: Path, workers: int) -> Run:
    per_chunk = min(PER_CHUNK, max(1, len(corpus.files) // workers))  # a tiny corpus: a chunk per producer
    # From the repository root: a forkserver started here imports etl from its own working folder (Python 3.11
    # ignores the parent's sys.path for its preload), which elsewhere may be another checkout's editable install.
    with contextlib.chdir(REPO):
        res = writer_ceiling(db, total=len(corpus.files), producers=workers, per_chunk=per_chunk, rounds=1,
                             record_bytes=corpus.mean_bytes)
    seconds = res["records"] / res["records_per_second"]
    return Run(res["records"], seconds, seconds, res["records"] * corpus.mean_bytes / 1e6)


ENCODED, CEILING = "etl imageset --encoded", "writer ceiling (stand-in producers)"
RESIZED, POOL = f"etl imageset --resize {SIDE}", f"Pool + OpenCV --resize {SIDE}"
CONTENDERS: dict[str, Callable[[Corpus, Path, int], Run]] = {
    ENCODED: etl_imageset(["--encoded"], encoded=True),
    CEILING: ceiling,
    RESIZED: etl_imageset([f"--resize_width={SIDE}", f"--resize_height={SIDE}"], encoded=False),
    POOL: pool_opencv,
}


def prepare(corpus: Corpus, cold: bool) -> None:
    """The corpus dropped from the page cache (and the programs' modules read back) or read into it."""
    if cold:
        evict(corpus.files)
        load_programs()
    else:
        warm(corpus.files)


def measure(corpus: Corpus, work: Path, workers: int, rounds: int, cold: bool) -> dict[str, Run]:
    best: dict[str, Run] = {}
    seconds: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for r in range(rounds):
        for name in list(CONTENDERS) if r % 2 == 0 else list(reversed(CONTENDERS)):
            if name != CEILING:
                prepare(corpus, cold)
            db = work / "db"
            run = CONTENDERS[name](corpus, db, workers)
            shutil.rmtree(db, ignore_errors=True)
            print(f"round {r + 1}: {name}: {run.seconds:.2f} s", file=sys.stderr, flush=True)
            seconds[name].append(run.seconds)
            if name not in best or run.seconds < best[name].seconds:
                best[name] = run
    for name, run in best.items():
        run.rounds = seconds[name]
    return best


def table(best: dict[str, Run]) -> list[str]:
    lines = ["| run | images | command s | images/s | MB/s | engine s | engine images/s | every round, s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in best.items():
        lines.append(f"| {name} | {run.images:,d} | {run.seconds:.2f} | {run.images / run.seconds:.0f} | "
                     f"{run.mb / run.seconds:.0f} | {run.engine_seconds:.2f} | {run.images / run.engine_seconds:.0f} | "
                     f"{', '.join(f'{s:.2f}' for s in run.rounds)} |")

    def rate(name: str, engine: bool = False) -> float:
        run = best[name]
        return run.images / (run.engine_seconds if engine else run.seconds)

    def row(target: str, ratio: Callable[[bool], float], goal: float) -> str:
        cells = [f"{ratio(engine):.2f}x | {'yes' if ratio(engine) >= goal else 'no'}" for engine in (False, True)]
        return f"| {target} | {' | '.join(cells)} |"

    return lines + ["", "| target | command | met | engine | met |", "|---|---|---|---|---|",
                    row("--encoded >= 0.80x the writer ceiling", lambda e: rate(ENCODED, e) / rate(CEILING), 0.8),
                    row(f"--resize {SIDE} >= 1.0x Pool + OpenCV", lambda e: rate(RESIZED, e) / rate(POOL, e), 1.0)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--src", help="a folder of real JPEGs (a flat ImageNet folder is sorted by wnid)")
    src.add_argument("--generate", type=int, default=3000, help="generated images when no --src (default 3000)")
    ap.add_argument("--repeat", type=int, default=12, help="copies of the --src files (default 12)")
    ap.add_argument("--workers", type=int, default=usable_cores(), help="processes of each contender (default: "
                    "every usable core)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the best of each contender counts (default 3)")
    ap.add_argument("--cold", action="store_true", help="drop the corpus from the page cache before each run")
    ap.add_argument("--out", help="also write the table here, the command line at its top")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="etl-imageset-bench-") as tmp:
        corpus = Corpus(Path(tmp), args.src, args.generate, args.repeat)
        best = measure(corpus, Path(tmp), args.workers, args.rounds, args.cold)
    what = f"{args.src} x{args.repeat}" if args.src else "generated"
    header = [f"# python benchmarks/imageset_bench.py {shlex.join(sys.argv[1:] if argv is None else argv)}",
              f"# {usable_cores()} usable cores ({platform.processor() or platform.machine()}), 1-minute load "
              f"{load:.2f} at the start; {args.workers} processes per contender; best of {args.rounds}; "
              f"page cache {'cold' if args.cold else 'warm'}",
              f"# corpus: {len(corpus.files):,d} files ({what}), mean {corpus.mean_bytes / 1000:.1f} KB; the ceiling's "
              f"records hold that many bytes"]
    text = "\n".join(header + table(best))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
