"""Disk I/O caps in practice: achieved rates against the caps, and the uncapped speed against an earlier revision.

    python benchmarks/throttle_bench.py --src FOLDER [--repeat 12] [--read-cap 10] [--write-cap 2]
                                        [--baseline-rev ee1f001]

Every run converts the same tree with the page cache warmed first; the baseline revision (the
code before throttling existed) runs from a `git archive` export, so both are measured in one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl.bench import build_corpus  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def warm(tree: Path) -> None:
    for p in tree.rglob("*"):
        if p.is_file():
            p.read_bytes()


def run(code: Path, tree: Path, out: Path, *extra: str) -> dict:
    warm(tree)
    cmd = [sys.executable, "-m", "etl", "convert", str(tree), str(out), "--val-pct", "0", "--quiet", "--overwrite",
           *extra]
    subprocess.run(cmd, cwd=code, check=True)
    return json.loads((out / "report.json").read_text())["splits"]["train"]


def export(rev: str, dest: Path) -> Path:
    archive = dest / "rev.tar"
    subprocess.run(["git", "archive", "-o", str(archive), rev], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest / "rev", filter="data")
    return dest / "rev"


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["images_per_second"])[len(runs) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True)
    ap.add_argument("--repeat", type=int, default=12)
    ap.add_argument("--read-cap", type=float, default=10.0)
    ap.add_argument("--write-cap", type=float, default=2.0)
    ap.add_argument("--baseline-rev", default="ee1f001", help="a revision from before throttling")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved uncapped runs of each; the median counts")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="etl-io-") as tmp:
        work = Path(tmp)
        tree = build_corpus(work, args.src, 0, args.repeat)
        before = export(args.baseline_rev, work)
        pairs = [(run(before, tree, work / "o"), run(REPO, tree, work / "o")) for _ in range(args.rounds)]
        rows = [
            ("before throttling existed (median)", median_run([b for b, _ in pairs])),
            ("now, no caps (median)", median_run([n for _, n in pairs])),
            (f"--max-read-mbps {args.read_cap:g}", run(REPO, tree, work / "o", "--max-read-mbps", str(args.read_cap))),
            (f"--max-write-mbps {args.write_cap:g}",
             run(REPO, tree, work / "o", "--max-write-mbps", str(args.write_cap))),
        ]
    base = rows[0][1]["images_per_second"]
    print("| run | images/s | x before | read MB/s | write MB/s | throttled s (workers / writer) |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        io = r.get("io", {})
        read = io.get("read_mbps", r["bytes_read"] / 1e6 / r["wall_seconds"])
        write = io.get("write_mbps", r["writer"]["data_bytes"] / 1e6 / r["wall_seconds"])
        throttled = f"{io['workers_throttled_seconds']:.1f} / {io['writer_throttled_seconds']:.1f}" if io else "-"
        print(f"| {name} | {r['images_per_second']:.0f} | {r['images_per_second'] / base:.2f} | {read:.2f} | "
              f"{write:.2f} | {throttled} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
