"""What a cold read costs the CPU: buffered read() + POSIX_FADV_DONTNEED (etl's reader) against O_DIRECT.

    python benchmarks/direct_read_bench.py --src DIR [--repeat 24] [--rounds 2]

The files in DIR are copied --repeat times (distinct files) into a temporary folder; before each pass the
page cache is dropped (root only). Each pass reads every file once in one process and reports, per file,
its own user and system CPU and the whole machine's busy time (from /proc/stat: kernel work done outside
the process, such as I/O completion, counts too).
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl.bench.cold import drop_caches  # noqa: E402
from etl.bench.corpus import build_corpus, corpus_files  # noqa: E402
from etl.bench.endtoend import MACHINE_FIELDS, machine_cpu  # noqa: E402

ALIGN = 4096  # O_DIRECT wants the buffer, offset and length aligned to the block size


def buffered(path: Path, _: mmap.mmap) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, os.fstat(fd).st_size + 1)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return len(data)
    finally:
        os.close(fd)


def direct(path: Path, buf: mmap.mmap) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        size = os.fstat(fd).st_size
        view = memoryview(buf)[:(size + ALIGN - 1) // ALIGN * ALIGN]
        return len(bytes(view[:min(os.readv(fd, [view]), size)]))
    finally:
        os.close(fd)


def busy() -> tuple[float, float]:
    """(busy, system) seconds of the whole machine."""
    v = dict(zip(MACHINE_FIELDS, machine_cpu(), strict=True))
    return sum(v.values()) - v["idle"] - v["iowait"], v["system"]


def one_pass(name: str, read: Callable[[Path, mmap.mmap], int], files: list[Path], buf: mmap.mmap) -> str:
    drop_caches()
    (b0, s0), t0, r0 = busy(), time.perf_counter(), os.times()
    total = sum(read(f, buf) for f in files)
    (b1, s1), t1, r1 = busy(), time.perf_counter(), os.times()
    us = 1e6 / len(files)
    return (f"| {name} | {len(files):,d} | {total / 1e6:.0f} | {t1 - t0:.2f} | {(r1.user - r0.user) * us:.0f} | "
            f"{(r1.system - r0.system) * us:.0f} | {(b1 - b0) * us:.0f} | {(s1 - s0) * us:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--repeat", type=int, default=24)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("direct_read_bench: dropping the page cache needs root")
    with tempfile.TemporaryDirectory(prefix="etl-direct-", dir=".") as work:
        files = corpus_files(build_corpus(Path(work), args.src, 0, args.repeat))
        os.sync()
        buf = mmap.mmap(-1, 1 + max(f.stat().st_size for f in files) // ALIGN * ALIGN + ALIGN)
        print("| read | files | MB | wall s | process user us/file | process system us/file | machine busy "
              "us/file | machine system us/file |")
        print("|---|---|---|---|---|---|---|---|")
        for _ in range(args.rounds):
            for name, read in (("buffered + DONTNEED", buffered), ("O_DIRECT", direct)):
                print(one_pass(name, read, files, buf), flush=True)


if __name__ == "__main__":
    main()
