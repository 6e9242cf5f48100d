"""The Ray runner against the local runner, on one machine: the same sharded conversion, with and without the
Ray cluster's start-up.

    python benchmarks/ray_bench.py --src DIR [--repeat 12] [--shard-size 500] [--rounds 2]

The corpus (the files in DIR copied --repeat times) is converted with --shard-size and no val split, in this
process: by the local runner (shards one after the other, every core), and by `--runner ray` on a local Ray
of every core started once before the Ray rounds (its start-up timed on its own), one shard per task with
--cpus-per-shard 1 and, in a second variant, all cores. Page cache warm. Each round runs the contenders in
turn; the best counts. Every output is checked against the local run's shards.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray  # noqa: E402

from etl.bench.corpus import build_corpus, corpus_files, warm  # noqa: E402
from etl.pipeline import convert  # noqa: E402
from etl.settings import build_settings, usable_cores  # noqa: E402


def shard_bytes(out: Path) -> list[bytes]:
    return [(d / "data.mdb").read_bytes() for d in sorted(p for p in (out / "train_db").iterdir() if p.is_dir())]


def timed(values: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    report = convert(build_settings(values), progress=False)
    return time.perf_counter() - t0, report["splits"]["train"]["written"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--repeat", type=int, default=12)
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    cores = usable_cores()
    with tempfile.TemporaryDirectory(prefix="etl-ray-", dir=".") as tmp:
        work = Path(tmp)
        tree = build_corpus(work, args.src, 0, args.repeat)
        common = {"train_dir": str(tree), "val_pct": 0.0, "shard_size": args.shard_size, "overwrite": True}
        contenders = {
            "local runner": {"workers": cores},
            "Ray, 1 core per shard": {"runner": "ray", "cpus_per_shard": 1},
            f"Ray, {cores} cores per shard": {"runner": "ray", "cpus_per_shard": cores},
        }
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=cores, include_dashboard=False)
        start_up = time.perf_counter() - t0
        best: dict[str, tuple[float, int]] = {}
        reference: list[bytes] | None = None
        for _ in range(args.rounds):
            for k, (name, more) in enumerate(contenders.items()):
                warm(corpus_files(tree))
                out = work / f"out{k}"
                seconds, images = timed({**common, "out_dir": str(out), **more})
                reference = reference or shard_bytes(out)
                assert shard_bytes(out) == reference, f"{name}: other shards than the local runner's"
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, images)
                shutil.rmtree(out)
        ray.shutdown()
        local_rate = best["local runner"][1] / best["local runner"][0]
        print(f"{cores} cores; {best['local runner'][1]:,d} images, shards of {args.shard_size}; Ray start-up "
              f"{start_up:.1f} s\n")
        print("| runner | seconds | images/s | x local | with Ray's start-up: images/s | x local |")
        print("|---|---|---|---|---|---|")
        for name, (seconds, images) in best.items():
            extra = start_up if name.startswith("Ray") else 0.0
            print(f"| {name} | {seconds:.2f} | {images / seconds:,.0f} | {images / seconds / local_rate:.2f} | "
                  f"{images / (seconds + extra):,.0f} | {images / (seconds + extra) / local_rate:.2f} |")


if __name__ == "__main__":
    main()
