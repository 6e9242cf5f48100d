"""Bench: the benchmark harness: corpus, per-stage figures, the decode+encode limit, etl against the
baselines end to end, the writer's serial ceiling, memory, and the worker sweep behind `etl tune`."""

from __future__ import annotations

import gc
import io
import json
import multiprocessing as mp
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

import cv2
import lmdb
import numpy as np
from PIL import Image

from etl.baselines import opencv_kernel, pil_kernel, run_pool_baseline
from etl.codec import Codec, Decoded, Planes, chroma_shape
from etl.converter import ImageConverter, WorkSpec
from etl.datum import encode_datum
from etl.messages import STAGES, ChunkResult, Done, Item, Progress, Ready, Record, ResultsLink, WriterSummary
from etl.procs import mp_context, widen
from etl.settings import Settings, usable_cores
from etl.sources import scan_tree
from etl.synth import TreeSpec, make_tree
from etl.transform import apply_geometry, fit_planes, plan_geometry
from etl.writer import WriterSpec, writer_main

SIZE = 224
RECORD_BYTES = 17_000  # a 224x224 q90 JPEG of ImageNet averages ~17 KB
START_SECONDS = 60  # for the ceiling's stand-in workers to start and connect


# ---- corpus -----------------------------------------------------------------------------------------

def build_corpus(work: Path, src: str | None, generate: int, repeat: int = 1) -> Path:
    """A class tree to measure on: generated (ImageNet-like), or real files copied `repeat` times.

    A flat folder of ImageNet files named <wnid>_*.JPEG is sorted into class folders by wnid.
    """
    tree = work / "tree"
    if src is None:
        classes = max(1, min(100, generate // 30))
        per_class = -(-generate // classes)
        make_tree(tree, TreeSpec(classes=classes, per_class=per_class, seed=11, awkward=False))
        return tree
    root = Path(src)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    flat = all(p.parent == root for p in files)
    for k in range(repeat):
        for p in files:
            cls = p.name.split("_")[0] if flat else p.parent.name
            dest = tree / cls / (p.name if repeat == 1 else f"{p.stem}_r{k}{p.suffix}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
    return tree


def corpus_files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*") if p.is_file())


def warm(files: list[Path]) -> None:
    for p in files:
        p.read_bytes()


# ---- per-image kernel and stages (one process) --------------------------------------------------------

def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def _best_ms(fn: Callable[[Any], Any], inputs: list[Any], rounds: int = 3) -> tuple[float, list[Any]]:
    for x in inputs[:10]:
        fn(x)  # warm-up
    best, out = float("inf"), []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = [fn(x) for x in inputs]
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / max(1, len(inputs)), out


def _spec(width: int = SIZE) -> WorkSpec:
    return WorkSpec.for_split(Settings(width=width, height=width, max_pixels=10**9, seed=0), "val", None, False)


def _jpeg_of(value: bytes) -> bytes:
    return value[value.index(b"\xff\xd8"):value.rindex(b"\xff\xd9") + 2]


def kernels(blobs: list[bytes]) -> dict[str, dict[str, float]]:
    """ms per image and PSNR (against LANCZOS of the full decode) of etl's kernel and the baselines'."""
    cv2.setNumThreads(1)
    refs = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)) for b in blobs]
    conv = ImageConverter(_spec())
    times = dict.fromkeys(STAGES, 0.0)
    contenders: dict[str, Callable[[bytes], bytes]] = {
        "Pillow BILINEAR (DIGITS)": pil_kernel,
        "OpenCV INTER_LINEAR (Caffe)": opencv_kernel,
        "etl": lambda b: _jpeg_of(conv.convert_bytes(b, Item(0, "", 0), times)[0]),
    }
    out = {}
    for name, fn in contenders.items():
        ms, results = _best_ms(fn, blobs)
        quality = float(np.mean([psnr(np.asarray(Image.open(io.BytesIO(r)).convert("RGB")), ref)
                                 for r, ref in zip(results, refs, strict=True)]))
        out[name] = {"ms_per_image": round(ms, 3), "psnr_db": round(quality, 2)}
    return out


def stages(files: list[Path], work: Path) -> dict[str, float]:
    """ms per image of each stage on its own, one process, and all of them together."""
    cv2.setNumThreads(1)
    codec, spec = Codec(3, 10**9), _spec()
    conv = ImageConverter(spec)
    full = lambda w, h: 1  # noqa: E731
    read_ms, blobs = _best_ms(lambda p: p.read_bytes(), files, rounds=1)
    header_ms, _ = _best_ms(codec.tj.decode_header, blobs)
    decode_full_ms, _ = _best_ms(lambda b: codec.decode(b, full), blobs)
    planes_full_ms, _ = _best_ms(lambda b: codec.decode_planes(b, full) or codec.decode(b, full), blobs)
    decode_ms, decoded = _best_ms(lambda b: codec.decode_planes(b, conv._scale_chooser)
                                  or codec.decode(b, conv._scale_chooser), blobs)
    resize_ms, fitted = _best_ms(_fit, decoded)
    encode_ms, payloads = _best_ms(lambda out: codec.encode_planes(*out, 90) if len(out) == 3
                                   else codec.encode(out[0], "jpg", 90), fitted)
    datum_ms, values = _best_ms(lambda jpg: encode_datum(3, SIZE, SIZE, jpg, 7, True), payloads)
    times = dict.fromkeys(STAGES, 0.0)
    together_ms, _ = _best_ms(lambda b: conv.convert_bytes(b, Item(0, "", 0), times), blobs)
    put_ms, commit_ms = _lmdb_costs(values, work / "stage_db")
    return {"read": read_ms, "header": header_ms, "decode to RGB (full size)": decode_full_ms,
            "decode to YCbCr planes (full size)": planes_full_ms,
            "decode (as used: planes, DCT-scaled when large)": decode_ms, "resize": resize_ms, "encode": encode_ms,
            "datum": datum_ms, "writer put": put_ms, "writer commit": commit_ms,
            "decode+resize+encode+datum together": together_ms}


def _fit(decoded: Planes | Decoded) -> tuple[np.ndarray, ...]:
    geo = plan_geometry(decoded.src_w, decoded.src_h, SIZE, SIZE, "squash")
    if isinstance(decoded, Planes):
        return fit_planes(decoded, geo, SIZE, SIZE)
    return (apply_geometry(decoded.pixels, geo, SIZE, SIZE, None),)


def _lmdb_costs(values: list[bytes], path: Path, batch: int = 1000) -> tuple[float, float]:
    env = lmdb.open(str(path), map_size=1 << 32)  # the writer's settings: LMDB's durable defaults
    put = commit = 0.0
    n = 0
    while n < 3000:
        txn = env.begin(write=True)
        t0 = time.perf_counter()
        cursor = txn.cursor()
        for v in values:
            cursor.put(b"%08d_%d" % (n, 7), v, append=True)
            n += 1
            if n % batch == 0:
                break
        t1 = time.perf_counter()
        txn.commit()
        put, commit = put + t1 - t0, commit + time.perf_counter() - t1
    env.close()
    return 1000 * put / n, 1000 * commit / n


# ---- the limit: full decode + encode on every core -------------------------------------------------

def _limit_worker(blobs: list[bytes], results: Any) -> None:
    """The cheapest full decode there is (to YCbCr planes, as etl does) and a 224x224 encode from it."""
    codec = Codec(3, 10**9)
    t0 = time.perf_counter()
    for b in blobs:
        planes = codec.decode_planes(b, lambda w, h: 1)
        if planes is None:
            px = codec.decode(b, lambda w, h: 1).pixels
            codec.encode(np.ascontiguousarray(px[:SIZE, :SIZE]), "jpg", 90)
            continue
        y = np.ascontiguousarray(planes.y[:SIZE, :SIZE])
        ch, cw = chroma_shape(*y.shape)
        codec.encode_planes(y, *(np.ascontiguousarray(c[:ch, :cw]) for c in (planes.cb, planes.cr)), 90)
    results.put((len(blobs), time.perf_counter() - t0))


def limit(blobs: list[bytes], workers: int) -> float:
    """images/s of full-size decode + a 224x224 encode alone, from memory, every core, no IPC.

    Each process gets its share at fork (nothing is sent) and times itself; the slowest sets the pace.
    """
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_limit_worker, args=(blobs[i::workers], results)) for i in range(workers)]
    for p in procs:
        p.start()
    done = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(n for n, _ in done) / max(seconds for _, seconds in done)


# ---- end to end ------------------------------------------------------------------------------------

def end_to_end(tree: Path, work: Path, workers: int, rounds: int = 2) -> dict[str, dict[str, Any]]:
    """Each contender `rounds` times, interleaved, page cache warmed before every run; the best run counts
    (these shared machines drift by 10-20% from run to run)."""
    classes = scan_tree(str(tree))
    items = [(str(tree / p), label) for label, files in enumerate(classes.values()) for p in files]
    files = [Path(p) for p, _ in items]
    contenders: dict[str, Callable[[Path], dict[str, Any]]] = {
        "Pool + Pillow (DIGITS kernel)": lambda db: run_pool_baseline(pil_kernel, items, workers, db),
        "Pool + OpenCV (Caffe kernel)": lambda db: run_pool_baseline(opencv_kernel, items, workers, db),
        "etl convert": lambda db: run_etl(tree, db, workers),
    }
    best: dict[str, dict[str, Any]] = {}
    for r in range(rounds):
        for k, (name, run) in enumerate(contenders.items()):
            warm(files)
            result = run(work / f"e2e_{k}_{r}")
            if name not in best or result["images_per_second"] > best[name]["images_per_second"]:
                best[name] = result
    return best


def run_etl(tree: Path, out: Path, workers: int, chunk_size: int = 64, queue_depth: int = 2) -> dict[str, Any]:
    """`etl convert` in its own process, as a user runs it, so its memory and CPU are its own."""
    subprocess.run([sys.executable, "-m", "etl", "convert", str(tree), str(out), "--val-pct", "0", "--quiet",
                    "--overwrite", "--workers", str(workers), "--chunk-size", str(chunk_size),
                    "--queue-depth", str(queue_depth)],
                   check=True, cwd=Path(__file__).resolve().parent.parent)
    split = json.loads((out / "report.json").read_text())["splits"]["train"]
    seconds = split["wall_seconds"]  # from its workers' start, as the baselines' clocks run from their Pool's
    # forkserver children are not reaped by us, so rusage would miss them: add up what each process measured
    cpu = split["worker_cpu_seconds"] + split["coordinator_cpu_seconds"] + split["writer"]["cpu_seconds"]
    return {"images": split["written"], "seconds": seconds, "images_per_second": split["written"] / seconds,
            "cpu_seconds": cpu, "report": split}


# ---- the serial part: the writer alone, fed at full speed -------------------------------------------

def _producer(link: ResultsLink, chunk_ids: list[int], records: int, start: Any) -> None:
    """A stand-in worker: connects to the writer as workers do and sends ready chunks, pickled."""
    value = encode_datum(3, SIZE, SIZE, os.urandom(RECORD_BYTES), 1, True)
    conn = Client(link.address, family="AF_UNIX", authkey=link.authkey)
    widen(conn)
    start.wait(timeout=START_SECONDS)  # all connected and ready: the clock measures the writer, not start-up
    for cid in chunk_ids:
        result = ChunkResult(cid, [Record(cid * records + i, 1, f"x/{cid}_{i}.jpg", value) for i in range(records)])
        conn.send_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    conn.close()


def writer_ceiling(work: Path, total: int = 40_000, producers: int = 4, per_chunk: int = 64,
                   rounds: int = 3) -> dict[str, float]:
    """Records/s the writer sustains: producers send it ready chunks as fast as they can, as workers do.
    The best of `rounds` runs, each into a fresh database (these shared machines drift from run to run)."""
    runs = []
    for r in range(rounds):
        runs.append(_ceiling_run(work / f"ceiling{r}", total // per_chunk, producers, per_chunk))
        shutil.rmtree(work / f"ceiling{r}")  # 0.7 GB each: free the disk and the page cache
    return max(runs, key=lambda run: run["records_per_second"])


def _ceiling_run(out: Path, n_chunks: int, producers: int, per_chunk: int) -> dict[str, float]:
    ctx = mp_context()
    writer_in, to_writer = ctx.Pipe(duplex=False)
    from_writer, writer_out = ctx.Pipe(duplex=False)
    spec = WriterSpec("train", str(out), "", 1000, False, mean=None)
    Path(spec.out_dir, ".etl").mkdir(parents=True, exist_ok=True)
    link = ResultsLink.new()
    writer = ctx.Process(target=writer_main, args=(spec, writer_in, writer_out, None, link))
    writer.start()
    assert isinstance(from_writer.recv(), Ready)
    start = ctx.Barrier(producers + 1)
    procs = [ctx.Process(target=_producer, args=(link, list(range(k, n_chunks, producers)), per_chunk, start))
             for k in range(producers)]
    for p in procs:
        p.start()
    try:
        start.wait(timeout=START_SECONDS)
    except threading.BrokenBarrierError:
        for proc in (*procs, writer):
            proc.kill()
        raise RuntimeError(f"the ceiling's stand-in workers did not all start within {START_SECONDS} s") from None
    t0 = time.perf_counter()
    written = 0
    while written < n_chunks:
        written += isinstance(from_writer.recv(), Progress)
    to_writer.send(Done(True))  # its last word: it may exit right after reading it
    while not isinstance(summary := from_writer.recv(), WriterSummary):
        pass
    seconds = time.perf_counter() - t0
    writer.join()
    for p in procs:
        p.join()
    records = n_chunks * per_chunk
    return {"records": records, "record_bytes": RECORD_BYTES, "producers": producers,
            "records_per_second": records / seconds, "mb_per_second": records * RECORD_BYTES / 1e6 / seconds,
            "writer_cpu_seconds_per_record": summary.cpu_seconds / records}


# ---- memory ----------------------------------------------------------------------------------------

def listing_memory(work: Path, counts: tuple[int, int] = (10_000, 200_000)) -> dict[str, Any]:
    """The coordinator's memory for the image list, measured in a fresh process per count."""
    traced: list[int] = []
    for n in counts:
        root = work / f"list{n}"
        _empty_tree(root, n)
        code = ("import json,sys,tracemalloc; from etl.settings import Settings; from etl.sources import plan; "
                "from etl.runners.ledger import chunks; tracemalloc.start(); "
                f"job = plan(Settings(train_dir={str(root)!r}, out_dir='x', val_pct=0.0)); "
                "tasks = [chunks(s.items, 64) for s in job.splits]; print(tracemalloc.get_traced_memory()[0])")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent.parent)
        traced.append(int(done.stdout.strip()))
        shutil.rmtree(root)
    return {"listed": list(counts), "traced_bytes": traced,
            "bytes_per_listed_image": (traced[1] - traced[0]) / (counts[1] - counts[0])}


def _empty_tree(root: Path, n: int, per_class: int = 1300) -> None:
    for i in range(n):
        folder = root / f"n{i // per_class:08d}"
        if i % per_class == 0:
            folder.mkdir(parents=True)
        os.close(os.open(folder / f"n{i // per_class:08d}_{i}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))


# ---- the worker sweep (etl tune) ------------------------------------------------------------------------

@dataclass
class SweepPoint:
    workers: int
    chunk_size: int
    images_per_second: float
    cpu_percent: float  # of all usable cores
    peak_rss_mb: float  # coordinator + writer + workers x the largest worker
    queue_depth: int = 2


def sweep(tree: Path, work: Path, worker_counts: list[int], chunk_sizes: list[int],
          queue_depths: list[int]) -> list[SweepPoint]:
    """Worker counts at the default chunk size and queue depth, then the others at the best count."""
    points = [_sweep_point(tree, work, w, 64, 2) for w in worker_counts]
    best = recommend(points)
    points += [_sweep_point(tree, work, best.workers, c, 2) for c in chunk_sizes if c != 64]
    points += [_sweep_point(tree, work, best.workers, 64, d) for d in queue_depths if d != 2]
    return points


def _sweep_point(tree: Path, work: Path, workers: int, chunk_size: int, queue_depth: int) -> SweepPoint:
    warm(corpus_files(tree))
    r = run_etl(tree, work / "sweep", workers, chunk_size, queue_depth)
    rss = r["report"]["peak_rss_mb"]
    return SweepPoint(workers, chunk_size, r["images_per_second"],
                      100 * r["cpu_seconds"] / r["seconds"] / usable_cores(),
                      rss["coordinator"] + rss["writer"] + workers * rss["worker_max"], queue_depth)


def recommend(points: list[SweepPoint]) -> SweepPoint:
    """The fewest workers within 3% of the best throughput (the rest of the machine stays free), with the
    default chunk size and queue depth unless only another setting comes that close."""
    best = max(p.images_per_second for p in points)
    near = [p for p in points if p.images_per_second >= 0.97 * best]
    return min(near, key=lambda p: (p.workers, (p.chunk_size, p.queue_depth) != (64, 2), -p.images_per_second))


def plot(points: list[SweepPoint], path: Path) -> None:
    """images/s against workers, drawn with Pillow (no plotting library needed)."""
    pts = sorted((p for p in points if (p.chunk_size, p.queue_depth) == (64, 2)), key=lambda p: p.workers)
    w, h, m = 640, 400, 60
    img = Image.new("RGB", (w, h), "white")
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    top = max(p.images_per_second for p in pts) * 1.15
    xmax = max(p.workers for p in pts)

    def xy(p: SweepPoint) -> tuple[float, float]:
        return m + (p.workers - 1) / max(1, xmax - 1) * (w - 2 * m), h - m - p.images_per_second / top * (h - 2 * m)

    d.line([(m, m), (m, h - m), (w - m, h - m)], fill="black", width=2)
    for k in range(5):
        y = h - m - k / 4 * (h - 2 * m)
        d.text((6, y - 6), f"{top * k / 4:.0f}", fill="black")
    for p in pts:
        x, _ = xy(p)
        d.text((x - 4, h - m + 8), str(p.workers), fill="black")
    d.line([xy(p) for p in pts], fill=(31, 119, 180), width=3)
    for p in pts:
        x, y = xy(p)
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(31, 119, 180))
    d.text((w // 2 - 40, h - 24), "workers", fill="black")
    d.text((m, 20), f"etl convert images/s by worker count ({usable_cores()} cores)", fill="black")
    img.save(path)


# ---- rendering ---------------------------------------------------------------------------------------

def render_bench(res: dict[str, Any]) -> str:
    lines = [f"etl bench: {res['files']} files, {res['workers']} workers, {res['cores']} usable cores", ""]
    base_ms = res["kernels"]["Pillow BILINEAR (DIGITS)"]["ms_per_image"]
    lines += ["Per-image kernel, one process, from memory (224x224 squash, JPEG q90; PSNR vs LANCZOS):",
              "| kernel | ms/image | x Pillow | PSNR dB |", "|---|---|---|---|"]
    for name, k in res["kernels"].items():
        lines.append(f"| {name} | {k['ms_per_image']:.2f} | {base_ms / k['ms_per_image']:.2f} | {k['psnr_db']:.2f} |")
    lines += ["", "Stages, one process, ms per image:", "| stage | ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.3f} |" for name, ms in res["stages"].items()]
    e2e, lim = res["end_to_end"], res["limit_images_per_second"]
    pil = e2e["Pool + Pillow (DIGITS kernel)"]["images_per_second"]
    ocv = e2e["Pool + OpenCV (Caffe kernel)"]["images_per_second"]
    lines += ["", "The limit (full decode to YCbCr planes + 224x224 encode, every core, from memory, no IPC): "
              f"{lim:.0f} images/s", "",
              "End to end, page cache warm, LMDB written:",
              "| pipeline | images/s | x Pillow | x OpenCV | of the limit |", "|---|---|---|---|---|"]
    for name, r in e2e.items():
        ips = r["images_per_second"]
        lines.append(f"| {name} | {ips:.0f} | {ips / pil:.2f} | {ips / ocv:.2f} | {ips / lim:.2f} |")
    lines += ["", _serial_text(res)]
    mem = res["memory"]
    lines += ["", f"Memory: coordinator list growth {mem['bytes_per_listed_image']:.0f} bytes per listed image "
              f"(tracemalloc: {mem['traced_bytes'][0]:,d} B at {mem['listed'][0]:,d} images, "
              f"{mem['traced_bytes'][1]:,d} B at {mem['listed'][1]:,d}); peak RSS in the "
              f"run: coordinator {mem['peak_rss_mb']['coordinator']:.0f} MB, each worker <= "
              f"{mem['peak_rss_mb']['worker_max']:.0f} MB, writer {mem['peak_rss_mb']['writer']:.0f} MB"]
    return "\n".join(lines)


def _serial_text(res: dict[str, Any]) -> str:
    c, s = res["ceiling"], res["serial"]
    return (f"Serial ceiling: writer fed by {c['producers']} producers: {c['records_per_second']:.0f} records/s of "
            f"{c['record_bytes'] // 1000} KB ({c['mb_per_second']:.0f} MB/s). In the real run, coordinator "
            f"{1e6 * s['coordinator_cpu_per_image']:.0f} us + writer {1e6 * s['writer_cpu_per_image']:.0f} us CPU "
            f"per image = {100 * s['serial_cpu_share']:.1f}% of all CPU; workers {1e3 * s['worker_cpu_per_image']:.2f} "
            f"ms per image. The serial part becomes the bottleneck at ~{s['bottleneck_cores']:.0f} worker cores.")


def serial_figures(etl_run: dict[str, Any], ceiling: dict[str, float]) -> dict[str, float]:
    rep = etl_run["report"]
    n = rep["written"]
    worker = rep["worker_cpu_seconds"] / n
    coord = rep["coordinator_cpu_seconds"] / n
    writer = rep["writer"]["cpu_seconds"] / n
    serial_rate = min(1 / max(coord, writer, 1e-9), ceiling["records_per_second"])
    return {"worker_cpu_per_image": worker, "coordinator_cpu_per_image": coord, "writer_cpu_per_image": writer,
            "serial_cpu_share": (coord + writer) / max(etl_run["cpu_seconds"] / n, 1e-9),
            "bottleneck_cores": serial_rate * worker}


def _no_opencv_threads() -> None:
    # The limit and the Pool baselines fork from this process: OpenCV's thread pool must never
    # exist here, or a forked child calling cv2 deadlocks on a lock held by a thread it lacks.
    cv2.setNumThreads(1)


def run_bench(src: str | None, generate: int, repeat: int, workers: int, out: Path,
              list_counts: tuple[int, int] = (10_000, 200_000), kernel_sample: int = 300,
              ceiling_records: int = 40_000) -> dict[str, Any]:
    _no_opencv_threads()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="etl-bench-") as tmp:
        work = Path(tmp)
        tree = build_corpus(work, src, generate, repeat)
        files = corpus_files(tree)
        blobs = [p.read_bytes() for p in files]
        res: dict[str, Any] = {"files": len(files), "workers": workers, "cores": usable_cores()}
        stride = max(1, len(files) // kernel_sample)  # spread over the classes, not the first few folders
        res["kernels"] = kernels(blobs[::stride][:kernel_sample])
        res["stages"] = stages(files[::stride][:kernel_sample], work)
        gc.collect()
        res["limit_images_per_second"] = limit(blobs, workers)
        del blobs
        res["end_to_end"] = end_to_end(tree, work, workers)
        res["ceiling"] = writer_ceiling(work, total=ceiling_records)
        res["serial"] = serial_figures(res["end_to_end"]["etl convert"], res["ceiling"])
        res["memory"] = {**listing_memory(work, list_counts),
                         "peak_rss_mb": res["end_to_end"]["etl convert"]["report"]["peak_rss_mb"]}
    (out / "bench.json").write_text(json.dumps(res, indent=2, default=float))
    return res


def run_tune(src: str | None, generate: int, repeat: int, max_workers: int, out: Path) -> dict[str, Any]:
    _no_opencv_threads()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="etl-tune-") as tmp:
        work = Path(tmp)
        tree = build_corpus(work, src, generate, repeat)
        points = sweep(tree, work, list(range(1, max_workers + 1)), [16, 64, 256], [1, 2, 4])
    best = recommend(points)
    plot(points, out / "sweep.png")
    res = {"points": [p.__dict__ for p in points], "recommended": best.__dict__}
    (out / "tune.json").write_text(json.dumps(res, indent=2))
    return res


def render_tune(res: dict[str, Any], out: Path) -> str:
    lines = ["| workers | chunk size | queue depth | images/s | CPU % of all cores | peak RSS MB (all processes) |",
             "|---|---|---|---|---|---|"]
    for p in res["points"]:
        lines.append(f"| {p['workers']} | {p['chunk_size']} | {p['queue_depth']} | {p['images_per_second']:.0f} | "
                     f"{p['cpu_percent']:.0f} | {p['peak_rss_mb']:.0f} |")
    best = res["recommended"]
    lines += ["", f"plot: {out / 'sweep.png'}", "", "Recommended (paste into your preset):",
              f"workers = {best['workers']}", f"chunk_size = {best['chunk_size']}",
              f"queue_depth = {best['queue_depth']}"]
    return "\n".join(lines)
