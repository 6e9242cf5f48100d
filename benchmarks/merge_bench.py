"""`etl merge` against the writer's ceiling: MB/s of joining a sharded split into one LMDB, byte for byte what
a run without shards writes.

    python benchmarks/merge_bench.py --src DIR [--repeat 24] [--shard-size 1000] [--rounds 3]

The corpus (the files in DIR copied --repeat times) is converted once with --shard-size (224x224 JPEG q90,
no val split); each round copies the sharded dataset and merges the copy (page cache warm: the shards were
just written or read), then the writer's ceiling is measured at the records' mean size
(etl.bench.ceiling.writer_ceiling). The merged train_db/data.mdb is checked against a conversion without
shards, byte for byte.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl.bench.ceiling import writer_ceiling  # noqa: E402
from etl.bench.corpus import build_corpus  # noqa: E402
from etl.merge import run_merge  # noqa: E402
from etl.pipeline import convert  # noqa: E402
from etl.settings import build_settings  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--repeat", type=int, default=24)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="etl-merge-", dir=".") as tmp:
        work = Path(tmp)
        tree = build_corpus(work, args.src, 0, args.repeat)
        common = {"train_dir": str(tree), "val_pct": 0.0}
        convert(build_settings({**common, "out_dir": str(work / "one")}), progress=False)
        convert(build_settings({**common, "out_dir": str(work / "sh"), "shard_size": args.shard_size}), progress=False)
        runs = []
        for r in range(args.rounds):
            copy = shutil.copytree(work / "sh", work / f"m{r}")
            runs.append(run_merge(str(copy), progress=False)[0])
            merged, single = copy / "train_db" / "data.mdb", work / "one" / "train_db" / "data.mdb"
            same = merged.read_bytes() == single.read_bytes()
            print(f"round {r + 1}: {runs[-1].records:,d} records, {runs[-1].data_bytes / 1e6:,.1f} MB in "
                  f"{runs[-1].seconds:.2f} s; byte-identical to the run without shards: {same}", flush=True)
            shutil.rmtree(copy)
        best = min(runs, key=lambda st: st.seconds)
        size = best.data_bytes // best.records
        ceiling = writer_ceiling(work, 40_000, record_bytes=size)
        merge_mbps = best.data_bytes / 1e6 / best.seconds
        print(f"\n| measure | records/s | MB/s |\n|---|---|---|\n"
              f"| etl merge (best of {args.rounds}) | {best.records / best.seconds:,.0f} | {merge_mbps:,.0f} |\n"
              f"| writer ceiling, {size:,d}-byte records | {ceiling['records_per_second']:,.0f} | "
              f"{ceiling['mb_per_second']:,.0f} |\n\nmerge / ceiling: {merge_mbps / ceiling['mb_per_second']:.2f}")


if __name__ == "__main__":
    main()
