"""Sweep: `etl tune`'s runs over worker counts, chunk sizes and queue depths, the recommendation, and the chart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from etl.bench.corpus import corpus_files, warm
from etl.bench.endtoend import run_etl
from etl.bench.engine import usable_cores


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
