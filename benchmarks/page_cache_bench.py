"""What the page-cache choice costs: back-to-back conversions of one tree into fresh folders, per mode.

    python benchmarks/page_cache_bench.py --src FOLDER [--repeat 40] [--rounds 3]

The modes take turns (drop, keep, auto, drop, ...) and every database stays on disk until the end,
as in `etl bench`'s end-to-end runs. The writer's CPU per record is the serial part's main cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.throttle_bench import REPO, run  # noqa: E402
from etl.bench import build_corpus  # noqa: E402

MODES = ("drop", "keep", "auto")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("| run | --page-cache | images/s | writer CPU us/record | writer commit s | input read CPU ms/image |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="etl-cache-") as tmp:
        work = Path(tmp)
        tree = build_corpus(work, args.src, 0, args.repeat)
        for r in range(args.rounds):
            for mode in MODES:
                split = run(REPO, tree, work / f"{mode}{r}", "--page-cache", mode)
                n, w = split["written"], split["writer"]
                print(f"| {r + 1} | {mode} | {split['images_per_second']:.0f} | {1e6 * w['cpu_seconds'] / n:.1f} | "
                      f"{w['commit_seconds']:.2f} | {1e3 * split['worker_stage_cpu_seconds']['read'] / n:.3f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
