"""Fault drill on real files: bad and awkward inputs mixed in, SIGKILL at random moments, resume.

    python benchmarks/fault_drill.py --src FOLDER [--kills 3] [--seed 0]

Builds a class tree from FOLDER (as `etl bench --src` does), adds every bad and awkward kind from
etl.synth, converts it once uninterrupted, then again while SIGKILLing the whole process group at
random moments and resuming, and compares the two datasets record by record.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl.bench import build_corpus  # noqa: E402
from etl.synth import awkward_files, bad_files  # noqa: E402

ARGS = ["--val-pct", "10", "--quiet"]


def records(db: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        out = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    env.close()
    return out


def etl(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "etl", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="etl-drill-") as tmp:
        work = Path(tmp)
        tree = build_corpus(work, args.src, 0, args.repeat)
        first = sorted(tree.iterdir())[0]
        must_skip = {"dangling.jpg"}
        for name, (data, outcome) in bad_files(np.random.default_rng(args.seed)).items():
            (first / name).write_bytes(data)
            if outcome is None:
                must_skip.add(name)
        for name, data in awkward_files(np.random.default_rng(args.seed)).items():
            (first / name).write_bytes(data)
        os.symlink(work / "nowhere.jpg", first / "dangling.jpg")
        n_files = sum(1 for p in tree.rglob("*") if p.is_file() or p.is_symlink())

        ref = work / "ref"
        t0 = time.monotonic()
        assert etl("convert", str(tree), str(ref), *ARGS).wait() == 0
        full_run = time.monotonic() - t0
        report = json.loads((ref / "report.json").read_text())["splits"]
        skipped = {Path(f["path"]).name for s in report.values() for f in s["skipped_files"]}
        written = sum(s["written"] for s in report.values())
        complete = written + len(skipped) == n_files
        print(f"{n_files} files: {written} written, {len(skipped)} skipped; "
              f"skipped == the bad ones: {skipped == must_skip}; all others written: {complete}")

        out = work / "killed"
        proc = etl("convert", str(tree), str(out), *ARGS)
        for k in range(args.kills):
            time.sleep(rng.uniform(0.1, full_run))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            have = len(records(out / "train_db")) if (out / "train_db" / "data.mdb").exists() else 0
            print(f"kill {k + 1}: SIGKILL after a random delay; train_db held {have} records")
            proc = etl("convert", str(tree), str(out), *ARGS, "--resume")
        assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
        same = all(records(ref / f"{s}_db") == records(out / f"{s}_db") for s in ("train", "val"))
        same &= all((ref / n).read_bytes() == (out / n).read_bytes()
                    for n in ("train.txt", "val.txt", "mean.binaryproto", "mean.jpg"))
        print(f"after {args.kills} kills and resumes: identical to the uninterrupted run: {same}")
        return 0 if same and skipped == must_skip else 1


if __name__ == "__main__":
    sys.exit(main())
