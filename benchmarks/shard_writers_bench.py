"""The writers' ceiling as --shard-writers runs them: K writer processes at once, each into its own LMDB, fed
by stand-in producers as workers feed them.

    python benchmarks/shard_writers_bench.py [--writers 1,2,4] [--records 40000] [--record-bytes 17000]

Each K: `etl.bench.ceiling.concurrent_ceiling` (2 producers per writer, chunks of 64 distinct records), best of
--rounds; records/s in all, over the longest writer's time. Run it on the machine you convert on: the
ceiling grows with K only where cores and the disk have room for more writers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl.bench.ceiling import RECORD_BYTES, concurrent_ceiling  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--writers", default="1,2,4")
    p.add_argument("--records", type=int, default=40_000)
    p.add_argument("--record-bytes", type=int, default=RECORD_BYTES)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.records:,d} records of {args.record_bytes:,d} bytes per measure\n")
    print("| writers | records/s | MB/s | writer CPU us/record | x one writer |\n|---|---|---|---|---|")
    first = None
    with tempfile.TemporaryDirectory(prefix="etl-writers-", dir=".") as tmp:
        for k in (int(w) for w in args.writers.split(",")):
            best = max((concurrent_ceiling(Path(tmp), k, args.records, record_bytes=args.record_bytes)
                        for _ in range(args.rounds)), key=lambda r: r["records_per_second"])
            first = first or best["records_per_second"]
            print(f"| {k} | {best['records_per_second']:,.0f} | {best['mb_per_second']:,.0f} | "
                  f"{1e6 * best['writer_cpu_seconds_per_record']:.0f} | {best['records_per_second'] / first:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
