"""This tree against an earlier revision: the same dataset byte for byte, and the speed side by side.

    python benchmarks/revision_bench.py --src FOLDER [--rev cd5986d] [--repeat 12] [--rounds 6] [--workers 2]

Both convert the same real tree (TRAIN from --src copied --repeat times, VAL from --src once) with the
page cache warmed first, interleaved and in alternating order (these VMs drift, and the run after
another finds memory in another state). The revision runs from a `git archive` export, so both
are measured in one run. Prints the identity check, then images/s and CPU per image.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import lmdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.throttle_bench import REPO, export, warm  # noqa: E402
from etl.bench import build_corpus  # noqa: E402

COMPARED = ("labels.txt", "mean.binaryproto", "mean.jpg", "train.txt", "val.txt")


def convert(code: Path, train: Path, val: Path, out: Path, workers: int) -> dict:
    warm(train)
    warm(val)
    subprocess.run([sys.executable, "-m", "etl", "convert", str(train), str(out), "--val-dir", str(val), "--quiet",
                    "--overwrite", "--workers", str(workers)], cwd=code, check=True)
    return json.loads((out / "report.json").read_text())["splits"]["train"]


def records(db: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        found = list(txn.cursor())
    env.close()
    return found


def differences(a: Path, b: Path) -> list[str]:
    diff = [name for name in COMPARED if (a / name).read_bytes() != (b / name).read_bytes()]
    return diff + [db for db in ("train_db", "val_db") if records(a / db) != records(b / db)]


def per_image(run: dict) -> tuple[float, float, float]:
    """(images/s, CPU ms per image of all processes, coordinator CPU us per image)."""
    n = run["written"]
    cpu = run["worker_cpu_seconds"] + run["coordinator_cpu_seconds"] + run["writer"]["cpu_seconds"]
    return run["images_per_second"], 1e3 * cpu / n, 1e6 * run["coordinator_cpu_seconds"] / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True)
    ap.add_argument("--rev", default="cd5986d")
    ap.add_argument("--repeat", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="etl-rev-") as tmp:
        work = Path(tmp)
        train, val = build_corpus(work / "t", args.src, 0, args.repeat), build_corpus(work / "v", args.src, 0, 1)
        codes = {args.rev: export(args.rev, work), "this tree": REPO}
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in codes}
        for r in range(args.rounds):
            for name in list(codes)[:: 1 if r % 2 == 0 else -1]:
                runs[name].append(per_image(convert(codes[name], train, val, work / name.replace(" ", "_"),
                                                    args.workers)))
        diff = differences(work / args.rev, work / "this_tree")
    print(f"identical outputs ({', '.join(COMPARED)}, train_db, val_db records): "
          f"{'yes' if not diff else 'NO: ' + ', '.join(diff)}")
    print("| code | images/s median (all runs) | CPU ms/image median | coordinator CPU us/image median |")
    print("|---|---|---|---|")
    for name, rs in runs.items():
        med = [sorted(x[k] for x in rs)[len(rs) // 2] for k in range(3)]
        print(f"| {name} | {med[0]:.0f} ({', '.join(f'{x[0]:.0f}' for x in rs)}) | {med[1]:.2f} | {med[2]:.1f} |")
    base, now = (sorted(x[0] for x in runs[n])[args.rounds // 2] for n in codes)
    print(f"\nthis tree / {args.rev}, median images/s: {now / base:.2f}")
    return 0 if not diff else 1


if __name__ == "__main__":
    sys.exit(main())
