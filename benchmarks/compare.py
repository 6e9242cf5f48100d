"""etl against the naive baselines, in one run on the same files: kernel speed and quality, then end to end.

    python benchmarks/compare.py --src FOLDER [--repeat K] [--workers N] [--json out.json]
    python benchmarks/compare.py --generate 3000

--src takes a class tree (FOLDER/<class>/<images>) or a flat folder of ImageNet files named
<wnid>_*.JPEG, which is sorted into class folders; --repeat copies the files K times under new
names to reach a larger corpus.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baselines import opencv_kernel, pil_kernel, run_pool_baseline  # noqa: E402
from etl.pipeline import convert  # noqa: E402
from etl.records import STAGES, Item  # noqa: E402
from etl.settings import Settings, usable_cores  # noqa: E402
from etl.sources import scan_tree  # noqa: E402
from etl.synth import TreeSpec, make_tree  # noqa: E402
from etl.workers import ImageConverter, WorkSpec  # noqa: E402

SIZE = 224


def build_corpus(args: argparse.Namespace, work: Path) -> Path:
    tree = work / "tree"
    if args.generate:
        classes = max(1, args.generate // 100)
        make_tree(tree, TreeSpec(classes=classes, per_class=args.generate // classes, seed=11, awkward=False))
        return tree
    src = Path(args.src)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    flat = all(p.parent == src for p in files)
    for k in range(args.repeat):
        for p in files:
            cls = p.name.split("_")[0] if flat else p.parent.name
            dest = tree / cls / f"{p.stem}_r{k}{p.suffix}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
    return tree


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def decoded_rgb(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def kernel_figures(paths: list[Path]) -> dict[str, dict[str, float]]:
    """One process, files from memory: ms per image and PSNR against LANCZOS of the full decode."""
    blobs = [p.read_bytes() for p in paths]
    refs = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)) for b in blobs]
    spec = WorkSpec("", 0, SIZE, SIZE, "squash", 3, "jpg", 90, 0, 10**9, sum_pixels=False)
    conv = ImageConverter(spec)
    times = dict.fromkeys(STAGES, 0.0)

    def etl_kernel(data: bytes) -> bytes:
        value, _, _ = conv.convert_bytes(data, Item(0, "", 0), times)
        return value[-(len(value) - value.index(b"\xff\xd8")):]  # the JPEG inside the Datum

    kernels = {
        "pil (DIGITS)": lambda b: pil_kernel(io.BytesIO(b)),  # type: ignore[arg-type]
        "opencv (Caffe)": lambda b: _opencv_from_bytes(b),
        "etl": etl_kernel,
    }
    out: dict[str, dict[str, float]] = {}
    cv2.setNumThreads(1)
    for name, kernel in kernels.items():
        for b in blobs[:20]:
            kernel(b)  # warm-up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            results = [kernel(b) for b in blobs]
            best = min(best, time.perf_counter() - t0)
        quality = float(np.mean([psnr(decoded_rgb(r), ref) for r, ref in zip(results, refs, strict=True)]))
        out[name] = {"ms_per_image": 1000 * best / len(blobs), "psnr_db": quality}
    return out


def _opencv_from_bytes(data: bytes) -> bytes:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def end_to_end(tree: Path, work: Path, workers: int) -> dict[str, dict[str, float]]:
    classes = scan_tree(str(tree))
    items = [(str(tree / p), label) for label, files in enumerate(classes.values()) for p in files]
    for path, _ in items:
        Path(path).read_bytes()  # page cache warm for every contender
    out: dict[str, dict[str, float]] = {}
    out["Pool + Pillow (DIGITS kernel)"] = run_pool_baseline(pil_kernel, items, workers, work / "pil_db")
    out["Pool + OpenCV (Caffe kernel)"] = run_pool_baseline(opencv_kernel, items, workers, work / "cv_db")
    t0 = time.perf_counter()
    report = convert(Settings(train_dir=str(tree), out_dir=str(work / "etl"), val_pct=0.0, workers=workers,
                              overwrite=True), progress=False)
    seconds = time.perf_counter() - t0
    written = report["splits"]["train"]["written"]
    out["etl convert"] = {"images": written, "seconds": seconds, "images_per_second": written / seconds}
    return out


def render(kernels: dict, e2e: dict, workers: int, n_files: int) -> str:
    base_k = kernels["pil (DIGITS)"]["ms_per_image"]
    lines = ["Per-image kernel, one process, from memory (224x224 squash, JPEG q90):",
             "| kernel | ms/image | x Pillow | PSNR dB |", "|---|---|---|---|"]
    for name, k in kernels.items():
        lines.append(f"| {name} | {k['ms_per_image']:.2f} | {base_k / k['ms_per_image']:.2f} | {k['psnr_db']:.2f} |")
    base = e2e["Pool + Pillow (DIGITS kernel)"]["images_per_second"]
    cv = e2e["Pool + OpenCV (Caffe kernel)"]["images_per_second"]
    lines += ["", f"End to end, {n_files} files, {workers} workers, page cache warm, LMDB written:",
              "| pipeline | images/s | x Pillow | x OpenCV |", "|---|---|---|---|"]
    for name, r in e2e.items():
        ips = r["images_per_second"]
        lines.append(f"| {name} | {ips:.0f} | {ips / base:.2f} | {ips / cv:.2f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--src", help="folder of real images")
    src.add_argument("--generate", type=int, help="make a synthetic ImageNet-like corpus of this many images")
    ap.add_argument("--repeat", type=int, default=1, help="copies of --src files (distinct names)")
    ap.add_argument("--workers", type=int, default=usable_cores())
    ap.add_argument("--kernel-sample", type=int, default=300, help="images for the per-kernel figures")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="etl-bench-") as tmp:
        work = Path(tmp)
        tree = build_corpus(args, work)
        files = sorted(p for p in tree.rglob("*") if p.is_file())
        kernels = kernel_figures(files[: args.kernel_sample])
        e2e = end_to_end(tree, work, args.workers)
    print(render(kernels, e2e, args.workers, len(files)))
    if args.json:
        Path(args.json).write_text(json.dumps({"kernels": kernels, "end_to_end": e2e}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
