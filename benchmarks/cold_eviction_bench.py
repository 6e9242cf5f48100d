"""Is a cold run slower for its input or for its programs? `etl convert` warm, after drop_caches (everything
evicted, Python's and OpenCV's code too), and after posix_fadvise(DONTNEED) on the corpus alone.

    python benchmarks/cold_eviction_bench.py --src DIR [--repeat 24] [--rounds 2] [--workers 2]

The files in DIR are copied --repeat times (distinct files). Each round runs the three in turn; each run is
`etl convert` in its own process (etl.bench.endtoend.run_etl), timed from its workers' start. Root only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl.bench.cold import advise_out, cached_share, drop_caches  # noqa: E402
from etl.bench.corpus import build_corpus, corpus_files, warm  # noqa: E402
from etl.bench.endtoend import run_etl  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--repeat", type=int, default=24)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("cold_eviction_bench: drop_caches needs root")
    with tempfile.TemporaryDirectory(prefix="etl-evict-", dir=".") as tmp:
        work = Path(tmp)
        tree = build_corpus(work, args.src, 0, args.repeat)
        files = corpus_files(tree)
        ways = {"warm": lambda: warm(files), "drop_caches": drop_caches,
                "DONTNEED on the corpus": lambda: advise_out(files)}
        print(f"{len(files):,d} files, {args.workers} workers\n\n| round | page cache | corpus cached | images/s | "
              "CPU s |\n|---|---|---|---|---|")
        for r in range(args.rounds):
            for k, (name, prepare) in enumerate(ways.items()):
                os.sync()
                prepare()
                share = cached_share(files)
                res = run_etl(tree, work / f"out{r}_{k}", args.workers)
                print(f"| {r + 1} | {name} | {100 * share:.0f}% | {res['images_per_second']:.0f} | "
                      f"{res['cpu_seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
