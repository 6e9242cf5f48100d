"""The ILSVRC2012 downloads converted in place, against the extracted folders and against the usual recipe;
and the cost of the archive index (scan time per member, memory per image).

    python benchmarks/archive_bench.py --src FOLDER [--images 6000] [--val 1000] [--classes 50] [--rounds 3]
                                       [--workers 2] [--cold]
    python benchmarks/archive_bench.py --scan [--classes 1000] [--per-class 300]

--src: builds ILSVRC2012-like downloads (a train tar of class tars, a flat val tar in shuffled order, the
devkit tar.gz) from the JPEGs in FOLDER, copied to reach --images train and --val val images (distinct
files), and the folders the recipe extracts from them. Then, each round, in alternating order:
  archives  etl convert ILSVRC2012_img_train.tar OUT --val ILSVRC2012_img_val.tar --val-labels <devkit>
  folders   etl convert train/ OUT --val val/  (the extracted folders, made beforehand: not timed)
  recipe    tar xf the train tar, tar xf each class tar (then rm it), tar xf the val tar, bash valprep.sh,
            then etl convert the folders: all of it timed
Warm runs read every input once before each contender; --cold drops the page cache before each instead
(as root: /proc/sys/vm/drop_caches). Also checks that archives and folders give the same records, labels
and mean files.

--scan: a tar of --classes class tars of --per-class small members: the index scan's time per member,
with the page cache warm and dropped, and the index's memory per image (tracemalloc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.revision_bench import records  # noqa: E402
from etl.bench.cold import drop_caches  # noqa: E402
from etl.sources.archive import ArchiveSource  # noqa: E402
from etl.synthilsvrc import add_member, tar_bytes  # noqa: E402
from etl.synthlabels import write_label_forms  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMPARED = ("labels.txt", "mean.binaryproto", "mean.jpg")
RECIPE = """set -e
mkdir -p {d}/train {d}/val
tar -xf {train} -C {d}/train
cd {d}/train
for f in *.tar; do mkdir -p "${{f%.tar}}"; tar -xf "$f" -C "${{f%.tar}}"; rm -f "$f"; done
tar -xf {val} -C {d}/val
cd {d}/val && bash {valprep} > /dev/null
"""


def build(work: Path, src: Path, images: int, val: int, classes: int) -> dict[str, Path]:
    """The downloads and the extracted folders, from the real JPEGs in src."""
    blobs = [p.read_bytes() for p in sorted(src.rglob("*")) if p.suffix.lower() in (".jpeg", ".jpg")]
    rng = np.random.default_rng(7)
    wnids = sorted(f"n{n:08d}" for n in rng.choice(np.arange(1_000_000, 9_999_999), classes, replace=False))
    train: dict[str, dict[str, bytes]] = {w: {} for w in wnids}
    for i in range(images):
        w = wnids[i % classes]
        train[w][f"{w}_{i}.JPEG"] = blobs[i % len(blobs)]
    with tarfile.open(work / "ILSVRC2012_img_train.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for w in rng.permutation(wnids):
            add_member(tar, f"{w}.tar", tar_bytes(train[str(w)]))
    wnid_of = {f"ILSVRC2012_val_{i:08d}": wnids[int(rng.integers(classes))] for i in range(1, val + 1)}
    val_files = {f"{s}.JPEG": blobs[(k * 7 + 3) % len(blobs)] for k, s in enumerate(wnid_of)}
    with tarfile.open(work / "ILSVRC2012_img_val.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for name in rng.permutation(list(val_files)):
            add_member(tar, str(name), val_files[str(name)])
    labels = write_label_forms(work / "labels", wnid_of, wnids)
    for w, files in train.items():
        (work / "train" / w).mkdir(parents=True)
        for name, data in files.items():
            (work / "train" / w / name).write_bytes(data)
    for name, data in val_files.items():
        (work / "val" / wnid_of[name[:-5]]).mkdir(parents=True, exist_ok=True)
        (work / "val" / wnid_of[name[:-5]] / name).write_bytes(data)
    return {"train_tar": work / "ILSVRC2012_img_train.tar", "val_tar": work / "ILSVRC2012_img_val.tar",
            "devkit": labels["devkit tar.gz"], "valprep": labels["valprep.sh"], "train": work / "train",
            "val": work / "val"}


def drop_cache() -> None:
    """Every cold run as root: the page cache dropped whole (drop_caches), or the bench stops."""
    if not drop_caches():
        sys.exit("this benchmark's cold runs need root (/proc/sys/vm/drop_caches)")


def warm(paths: list[Path]) -> None:
    for top in paths:
        for p in [top] if top.is_file() else top.rglob("*"):
            if p.is_file():
                p.read_bytes()


def etl_convert(args: list[str], out: Path, workers: int) -> None:
    subprocess.run([sys.executable, "-m", "etl", "convert", *args[:1], str(out), *args[1:], "--quiet",
                    "--overwrite", "--workers", str(workers)], cwd=REPO, check=True)


def run_archives(f: dict[str, Path], out: Path, workers: int) -> None:
    etl_convert([str(f["train_tar"]), "--val", str(f["val_tar"]), "--val-labels", str(f["devkit"])], out, workers)


def run_folders(f: dict[str, Path], out: Path, workers: int) -> None:
    etl_convert([str(f["train"]), "--val", str(f["val"])], out, workers)


def run_recipe(f: dict[str, Path], out: Path, workers: int) -> None:
    extracted = out.parent / (out.name + "_extracted")
    shutil.rmtree(extracted, ignore_errors=True)
    script = RECIPE.format(d=extracted, train=f["train_tar"], val=f["val_tar"], valprep=f["valprep"])
    subprocess.run(["bash", "-c", script], check=True)
    etl_convert([str(extracted / "train"), "--val", str(extracted / "val")], out, workers)
    shutil.rmtree(extracted)


CONTENDERS = {"archives": run_archives, "folders": run_folders, "recipe": run_recipe}
INPUTS = {"archives": ("train_tar", "val_tar", "devkit"), "folders": ("train", "val"),
          "recipe": ("train_tar", "val_tar", "valprep")}


def same_dataset(a: Path, b: Path) -> bool:
    return (all((a / n).read_bytes() == (b / n).read_bytes() for n in COMPARED)
            and all(records(a / db) == records(b / db) for db in ("train_db", "val_db")))


def conversions(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="etl-archive-bench-", dir=args.work) as tmp:
        work = Path(tmp)
        files = build(work, Path(args.src), args.images, args.val, args.classes)
        times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        for r in range(args.rounds):
            order = list(CONTENDERS) if r % 2 == 0 else list(reversed(CONTENDERS))
            for name in order:
                drop_cache() if args.cold else warm([files[k] for k in INPUTS[name]])
                t0 = time.perf_counter()
                CONTENDERS[name](files, work / f"out_{name}", args.workers)
                times[name].append(time.perf_counter() - t0)
                print(f"round {r}: {name} {times[name][-1]:.1f} s", flush=True)
        same = same_dataset(work / "out_archives", work / "out_folders")
    return summarize(times, args.images + args.val, same, args)


def summarize(times: dict[str, list[float]], images: int, same: bool, args: argparse.Namespace) -> dict:
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"images": images, "workers": args.workers, "cold": args.cold, "rounds": args.rounds,
            "seconds": times, "median_seconds": median,
            "images_per_second": {name: images / s for name, s in median.items()},
            "archives_speed_vs_folders": median["folders"] / median["archives"],
            "archives_speed_vs_recipe": median["recipe"] / median["archives"], "same_dataset": same}


def _round(size: int) -> int:
    return -(-size // 512) * 512


def sparse_train_tar(path: Path, classes: int, per_class: int, rng: np.random.Generator) -> None:
    """A tar of class tars laid out as ImageNet's (members of 2..400 KB, ~110 KB on average) whose data are
    holes: only the headers take disk, so the scan reads what it would read in the real 138 GB file."""
    with open(path, "wb") as fh:
        for c in range(classes):
            w = f"n{c:08d}"
            sizes = np.clip(rng.lognormal(11.4, 0.6, per_class), 2000, 400_000).astype(int)
            headers = []
            for i, size in enumerate(sizes):
                info = tarfile.TarInfo(f"{w}_{i}.JPEG")
                info.size = int(size)
                headers.append(info.tobuf(tarfile.GNU_FORMAT))
            inner = tarfile.TarInfo(f"{w}.tar")
            inner.size = sum(len(h) + _round(int(s)) for h, s in zip(headers, sizes, strict=True)) + 1024
            fh.write(inner.tobuf(tarfile.GNU_FORMAT))
            for header, size in zip(headers, sizes, strict=True):
                fh.write(header)
                fh.seek(_round(int(size)), os.SEEK_CUR)
            fh.write(bytes(1024))
        fh.write(bytes(1024))


def scan_cost(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="etl-scan-bench-", dir=args.work) as tmp:
        path = Path(tmp) / "train.tar"
        sparse_train_tar(path, args.classes, args.per_class, np.random.default_rng(1))
        members, size = args.classes * args.per_class, path.stat().st_size
        drop_cache()
        t0 = time.perf_counter()
        found = len(ArchiveSource(str(path)).index.paths)
        cold = time.perf_counter() - t0
        warm_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            ArchiveSource(str(path)).index  # noqa: B018 (the scan is the property's first read)
            warm_times.append(time.perf_counter() - t0)
        tracemalloc.start()
        source = ArchiveSource(str(path))
        source.index  # noqa: B018
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {"classes": args.classes, "members": members, "found": found, "archive_bytes": size,
            "cold_us_per_member": 1e6 * cold / members,
            "warm_us_per_member": [round(1e6 * t / members, 2) for t in warm_times],
            "index_bytes_per_image": held / members}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src")
    ap.add_argument("--scan", action="store_true")
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=None)
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--work", default=None, help="where to build the corpus (default: the temporary folder)")
    args = ap.parse_args()
    if args.scan:
        args.classes = args.classes or 1000
        print(json.dumps(scan_cost(args), indent=1))
        return 0
    if not args.src:
        ap.error("give --src FOLDER (real JPEGs) or --scan")
    args.classes = args.classes or 50
    print(json.dumps(conversions(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
