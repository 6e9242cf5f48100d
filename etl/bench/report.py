"""Report: the tables `etl bench` and `etl tune` print, the serial-part figures, and their JSON files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLOT_HINT = "plot: not drawn, the chart needs matplotlib: pip install 'etl[plot]'"


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
              f"End to end, page cache warm, LMDB written; the median of {res.get('rounds', 1)} interleaved runs "
              "(every run's figure in brackets):",
              "| pipeline | images/s | x Pillow | x OpenCV | of the limit |", "|---|---|---|---|---|"]
    for name, r in e2e.items():
        ips = r["images_per_second"]
        lines.append(f"| {name} | {ips:.0f} {_runs(r)} | {ips / pil:.2f} | {ips / ocv:.2f} | {ips / lim:.2f} |")
    if "end_to_end_cold" in res:
        lines += ["", _cold_table(res["end_to_end_cold"], e2e)]
    lines += ["", _serial_text(res)]
    mem = res["memory"]
    lines += ["", f"Memory: coordinator list growth {mem['bytes_per_listed_image']:.0f} bytes per listed image "
              f"(tracemalloc: {mem['traced_bytes'][0]:,d} B at {mem['listed'][0]:,d} images, "
              f"{mem['traced_bytes'][1]:,d} B at {mem['listed'][1]:,d}); peak RSS in the "
              f"run: coordinator {mem['peak_rss_mb']['coordinator']:.0f} MB, each worker <= "
              f"{mem['peak_rss_mb']['worker_max']:.0f} MB, writer {mem['peak_rss_mb']['writer']:.0f} MB"]
    return "\n".join(lines)


def _runs(r: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in r.get("runs_images_per_second", [])) + ")"


def _cold_table(cold: dict[str, Any], warm: dict[str, Any]) -> str:
    """The same runs from an emptied page cache, beside the warm figures, and where the machine's time went."""
    ocv = cold["Pool + OpenCV (Caffe kernel)"]["images_per_second"]
    lines = ["End to end, page cache emptied of the corpus before each run (cold), interleaved with the warm runs:",
             "| pipeline | cold images/s | warm images/s | cold / warm | cold x OpenCV cold |", "|---|---|---|---|---|"]
    for name, r in cold.items():
        c, w = r["images_per_second"], warm[name]["images_per_second"]
        lines.append(f"| {name} | {c:.0f} {_runs(r)} | {w:.0f} {_runs(warm[name])} | {c / w:.2f} | {c / ocv:.2f} |")
    lines += ["", "Where the machine's CPU time went in those median runs, ms per image, all CPUs, warm -> cold "
              "(/proc/stat over each whole command, start-up included; system includes interrupts; steal is time the "
              "hypervisor took):",
              "| pipeline | user | system | steal | idle + iowait |", "|---|---|---|---|---|"]
    for name, r in cold.items():
        if "machine" in r and "machine" in warm[name]:
            w, c = _machine_ms(warm[name]), _machine_ms(r)
            lines.append(f"| {name} | " + " | ".join(f"{w[k]:.2f} -> {c[k]:.2f}" for k in w) + " |")
    return "\n".join(lines)


def _machine_ms(run: dict[str, Any]) -> dict[str, float]:
    m, n = run["machine"], max(1, run["images"])
    return {"user": 1e3 * (m["user"] + m["nice"]) / n, "system": 1e3 * (m["system"] + m["irq"] + m["softirq"]) / n,
            "steal": 1e3 * m["steal"] / n, "idle": 1e3 * (m["idle"] + m["iowait"]) / n}


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


def render_tune(res: dict[str, Any], out: Path) -> str:
    regime = res.get("page_cache", "warm")
    rounds = res.get("rounds", 1)
    each = f"; each point the median of {rounds} runs (every run's figure in brackets)" if rounds > 1 else ""
    lines = [f"Every run with the page cache {'emptied of the corpus (cold)' if regime == 'cold' else 'warm'}{each}:",
             "",
             "| workers | chunk size | queue depth | read-ahead | images/s | CPU % of all cores | peak RSS MB (all "
             "processes) |", "|---|---|---|---|---|---|---|"]
    for p in res["points"]:
        lines.append(f"| {p['workers']} | {p['chunk_size']} | {p['queue_depth']} | {p.get('read_ahead', 8)} | "
                     f"{p['images_per_second']:.0f}{_point_runs(p)} | {p['cpu_percent']:.0f} | "
                     f"{p['peak_rss_mb']:.0f} |")
    best = res["recommended"]
    chart = f"plot: {out / 'sweep.png'}" if res.get("plotted", True) else PLOT_HINT
    lines += ["", chart, "", f"Recommended, measured {regime} (paste into your preset):",
              f"workers = {best['workers']}", f"chunk_size = {best['chunk_size']}",
              f"queue_depth = {best['queue_depth']}", f"read_ahead = {best['read_ahead']}"]
    return "\n".join(lines)


def _point_runs(p: dict[str, Any]) -> str:
    runs = p.get("runs", [])
    return " (" + ", ".join(f"{v:.0f}" for v in runs) + ")" if len(runs) > 1 else ""


def write_json(path: Path, res: dict[str, Any], default: Callable[[Any], Any] | None = None) -> None:
    """The figures as indented JSON; `default` converts what json cannot (numpy scalars)."""
    path.write_text(json.dumps(res, indent=2, default=default))
