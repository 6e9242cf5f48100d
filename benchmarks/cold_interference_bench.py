"""Does a cold read cost the machine more than the reader's own CPU? Converting from memory on every core, alone,
beside a reader of the corpus from a warm page cache, and beside the same reader from a cold one.

    python benchmarks/cold_interference_bench.py --src DIR [--repeat 24] [--rounds 3] [--seconds 10] [--rate 500]

The files in DIR are copied --repeat times (distinct files). The converters are one process per core, each
running etl's kernel (etl.bench.engine.converter) over the corpus' bytes held in memory, for --seconds. The
reader is one more process reading the corpus' files in order at --rate files per second (what a conversion on
this machine reads), from the page cache (warm) or after drop_caches (cold). No pipeline, no queue, no writer:
what the cold reader costs the converters is the cost of a cold read itself, on this machine. Root only.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl.bench.cold import drop_caches  # noqa: E402
from etl.bench.corpus import build_corpus, corpus_files, warm  # noqa: E402
from etl.bench.endtoend import MACHINE_FIELDS, machine_cpu  # noqa: E402
from etl.bench.engine import converter, converting, usable_cores  # noqa: E402


def convert_for(blobs: list[bytes], seconds: float, start: float, done: mp.Value) -> None:
    convert = converting(converter(224))
    while time.time() < start:  # every process starts converting at the same moment
        time.sleep(0.001)
    n, end = 0, start + seconds
    while time.time() < end:
        convert(blobs[n % len(blobs)])
        n += 1
    with done.get_lock():
        done.value += n


def read_at(files: list[Path], rate: float, start: float, seconds: float) -> None:
    while time.time() < start:
        time.sleep(0.001)
    for i, path in enumerate(files):
        due = start + i / rate
        if due > start + seconds:
            return
        if (wait := due - time.time()) > 0:
            time.sleep(wait)
        path.read_bytes()


def one_run(blobs: list[bytes], files: list[Path], reader: str, seconds: float, rate: float) -> dict[str, float]:
    if reader == "cold reader":
        if not drop_caches():
            sys.exit("cold_interference_bench: /proc/sys/vm/drop_caches cannot be written here")
    else:
        warm(files)
    done = mp.Value("q", 0)
    start = time.time() + 1.0
    procs = [mp.Process(target=convert_for, args=(blobs, seconds, start, done)) for _ in range(usable_cores())]
    if reader != "no reader":
        procs.append(mp.Process(target=read_at, args=(files, rate, start, seconds)))
    for p in procs:
        p.start()
    while time.time() < start:
        time.sleep(0.001)
    before = machine_cpu()
    for p in procs:
        p.join()
    used = {f: b - a for f, a, b in zip(MACHINE_FIELDS, before, machine_cpu(), strict=True)}
    return {"images_per_second": done.value / seconds, **used}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--repeat", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=500.0, help="files read per second")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("cold_interference_bench: drop_caches needs root")
    mp.set_start_method("fork")
    with tempfile.TemporaryDirectory(prefix="etl-interfere-", dir=".") as tmp:
        tree = build_corpus(Path(tmp), args.src, 0, args.repeat)
        files = corpus_files(tree)
        blobs = [f.read_bytes() for f in files[:: max(1, len(files) // 250)]]
        print(f"{usable_cores()} converters, {len(blobs)} images in memory; reader: {len(files):,d} files at "
              f"{args.rate:.0f}/s; {args.seconds:.0f} s per run\n")
        print("| round | beside | converted images/s | user s | system s | steal s | idle + iowait s |")
        print("|---|---|---|---|---|---|---|")
        for r in range(args.rounds):
            for reader in ("no reader", "warm reader", "cold reader"):
                m = one_run(blobs, files, reader, args.seconds, args.rate)
                print(f"| {r + 1} | {reader} | {m['images_per_second']:.0f} | {m['user']:.1f} | "
                      f"{m['system'] + m['irq'] + m['softirq']:.1f} | {m['steal']:.1f} | "
                      f"{m['idle'] + m['iowait']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
