"""Which way to read ahead: in place (none), a pool of 1 or 4 reader threads per worker (os.preadv), etl's
ReadAhead (a thread per image ahead), or posix_fadvise(WILLNEED) on the next files; 8 images ahead each.

    python benchmarks/readahead_strategies_bench.py --src DIR [--repeat 24] [--rounds 3] [--mbps 60]
        [--latencies 5,20] [--latency-files 1500]

The files in DIR are copied --repeat times (distinct files), in the seeded shuffled order etl converts them.
One worker process per core takes every other chunk of 64 files, gets each file's bytes the strategy's way
and converts them with etl's kernel (etl.bench.engine.converter: decode, 224x224 squash, JPEG q90), as a
worker does, without the pipeline around it. Every run is cold (drop_caches; root only), on this machine's
disk as it is, and on the same disk held to --mbps MB/s of reads by the cgroup v1 blkio throttle (a disk that
gives about what the conversion needs, so that every read waits for the device): the kernel delays each
request, read-ahead or not, so all four strategies meet the same storage. Then on --latency-files of them
with a wait of each --latencies milliseconds before every read, taken in the thread that reads, as on a
network filesystem or an object store mounted with FUSE (posix_fadvise cannot be given such a wait: the
kernel makes its reads). Rounds interleave the strategies; the median counts.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl.bench.cold import drop_caches  # noqa: E402
from etl.bench.corpus import build_corpus, corpus_files  # noqa: E402
from etl.bench.endtoend import MACHINE_FIELDS, machine_cpu, median_run  # noqa: E402
from etl.bench.engine import converter, converting, usable_cores  # noqa: E402
from etl.messages import Item  # noqa: E402
from etl.readahead import ReadAhead  # noqa: E402

DEPTH = 8
CHUNK = 64
LATENCY = [0.0]  # seconds each read waits first (set per table; the forked workers inherit it)
BLKIO = Path("/sys/fs/cgroup/blkio")


def read_file(path: str) -> bytes:
    time.sleep(LATENCY[0])
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def in_place(paths: list[str]) -> Iterator[bytes]:
    for p in paths:
        yield read_file(p)


def etl_read_ahead(paths: list[str]) -> Iterator[bytes]:
    """etl's own ReadAhead, as a worker uses it (one thread per image ahead, up to MAX_READ_THREADS)."""
    ahead = ReadAhead(lambda item: read_file(item.path), DEPTH)
    items = [Item(i, p, 0) for i, p in enumerate(paths)]
    ahead.plan(items)
    try:
        for item in items:
            yield ahead.take(item)[0]
    finally:
        ahead.close()


def thread_pool(paths: list[str], threads: int) -> Iterator[bytes]:
    def pread(path: str) -> bytes:
        time.sleep(LATENCY[0])
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            buf = bytearray(os.fstat(fd).st_size)
            return bytes(buf[:os.preadv(fd, [buf], 0)])
        finally:
            os.close(fd)

    with ThreadPoolExecutor(threads) as pool:
        flight = deque(pool.submit(pread, p) for p in paths[:DEPTH])
        for p in paths[DEPTH:] + [None] * min(DEPTH, len(paths)):
            data = flight.popleft().result()
            if p is not None:
                flight.append(pool.submit(pread, p))
            yield data


def will_need(paths: list[str]) -> Iterator[bytes]:
    """Open the next files and ask the kernel to start reading them; read each in place when its turn comes."""
    def advise(path: str) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        return fd

    flight = deque(advise(p) for p in paths[:DEPTH])
    for p in paths[DEPTH:] + [None] * min(DEPTH, len(paths)):
        fd = flight.popleft()
        try:
            data = os.read(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        if p is not None:
            flight.append(advise(p))
        yield data


STRATEGIES: dict[str, Callable[[list[str]], Iterator[bytes]]] = {
    "in place (no read-ahead)": in_place,
    "1 reader thread": lambda paths: thread_pool(paths, 1),
    "4 reader threads": lambda paths: thread_pool(paths, 4),
    "etl's ReadAhead (8 threads)": etl_read_ahead,
    "posix_fadvise(WILLNEED)": will_need}


def worker(name: str, paths: list[str], start: float, done: mp.Value) -> None:
    convert = converting(converter(224))
    while time.time() < start:
        time.sleep(0.001)
    n = 0
    for data in STRATEGIES[name](paths):
        convert(data)
        n += 1
    with done.get_lock():
        done.value += n


def one_run(name: str, files: list[str]) -> dict[str, float]:
    if not drop_caches():
        sys.exit("readahead_strategies_bench: /proc/sys/vm/drop_caches cannot be written here")
    cores = usable_cores()
    chunks = [files[i:i + CHUNK] for i in range(0, len(files), CHUNK)]
    shares = [[p for c in chunks[w::cores] for p in c] for w in range(cores)]
    done, start = mp.Value("q", 0), time.time() + 0.5
    procs = [mp.Process(target=worker, args=(name, share, start, done)) for share in shares]
    for p in procs:
        p.start()
    while time.time() < start:
        time.sleep(0.001)
    before, t0 = machine_cpu(), time.perf_counter()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - t0
    used = {f: b - a for f, a, b in zip(MACHINE_FIELDS, before, machine_cpu(), strict=True)}
    return {"images_per_second": done.value / seconds, **used}


@contextmanager
def read_limit(mbps: float | None) -> Iterator[None]:
    """This process (and the workers it forks) in a blkio cgroup holding the disk to `mbps` MB/s of reads."""
    if mbps is None:
        yield
        return
    group = BLKIO / "etl-readahead-bench"
    group.mkdir(exist_ok=True)
    device = Path("/sys/block/vda/dev").read_text().strip()  # this VM's disk; the corpus is on it
    (group / "blkio.throttle.read_bps_device").write_text(f"{device} {int(mbps * 1e6)}\n")
    (group / "tasks").write_text(str(os.getpid()))
    try:
        yield
    finally:
        (BLKIO / "tasks").write_text(str(os.getpid()))
        group.rmdir()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--repeat", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mbps", type=float, default=60.0, help="the throttled disk's read rate")
    p.add_argument("--latencies", default="5,20", help="milliseconds of wait before each read, one table each")
    p.add_argument("--latency-files", type=int, default=1500, help="files converted in the latency tables")
    args = p.parse_args()
    if os.geteuid() != 0 or not (BLKIO / "tasks").exists():
        sys.exit("readahead_strategies_bench: needs root and the cgroup v1 blkio controller")
    mp.set_start_method("fork")
    with tempfile.TemporaryDirectory(prefix="etl-strategies-", dir=".") as tmp:
        tree = build_corpus(Path(tmp), args.src, 0, args.repeat)
        files = [str(f) for f in corpus_files(tree)]
        random.Random(0).shuffle(files)
        mb = sum(os.path.getsize(f) for f in files) / 1e6
        print(f"{len(files):,d} files ({mb:.0f} MB), {usable_cores()} workers, {DEPTH} images ahead, cold\n")
        for disk, mbps in (("this VM's disk", None), (f"held to {args.mbps:g} MB/s", args.mbps)):
            with read_limit(mbps):
                table(disk, list(STRATEGIES), files, args.rounds)
        for ms in (float(x) for x in args.latencies.split(",") if x):
            LATENCY[0] = ms / 1000
            table(f"{ms:g} ms before each read, {args.latency_files:,d} files", [n for n in STRATEGIES if
                  STRATEGIES[n] is not will_need], files[:args.latency_files], args.rounds)


def table(title: str, names: list[str], files: list[str], rounds: int) -> None:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            runs[name].append(one_run(name, files))
    print(f"{title}:\n| strategy | images/s (median) | every run | idle + iowait s | system s |")
    print("|---|---|---|---|---|")
    for name, done in runs.items():
        mid = median_run(done)
        print(f"| {name} | {statistics.median(mid['runs_images_per_second']):.0f} | "
              f"{', '.join(f'{s:.0f}' for s in mid['runs_images_per_second'])} | "
              f"{mid['idle'] + mid['iowait']:.1f} | {mid['system'] + mid['irq'] + mid['softirq']:.1f} |")
    print(flush=True)

if __name__ == "__main__":
    main()
