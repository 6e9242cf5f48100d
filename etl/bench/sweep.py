"""Sweep: `etl tune`'s runs over worker counts, chunk sizes and queue depths, the recommendation, and the chart."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl.bench.cold import prepare
from etl.bench.corpus import corpus_files
from etl.bench.endtoend import median_run, run_etl
from etl.bench.engine import usable_cores

DEFAULTS = (64, 2, 8)  # chunk size, queue depth, read-ahead: etl convert's defaults, the sweep's main line
_OTHERS = {"chunk": ("^", "tab:orange", -1), "queue depth": ("s", "tab:green", 1),
           "read-ahead": ("D", "tab:purple", 0)}  # marker, colour, side
DODGE = 6  # points: the other settings' markers sit this far beside the default's, chunk left, queue depth right


@dataclass
class SweepPoint:
    workers: int
    chunk_size: int
    images_per_second: float
    cpu_percent: float  # of all usable cores
    peak_rss_mb: float  # coordinator + writer + workers x the largest worker
    queue_depth: int = 2
    read_ahead: int = 8
    runs: list[float] = field(default_factory=list)  # every run's images/s; the point is the median run's

    @property
    def settings(self) -> tuple[int, int, int]:
        return self.chunk_size, self.queue_depth, self.read_ahead


def sweep(tree: Path, work: Path, worker_counts: list[int], chunk_sizes: list[int], queue_depths: list[int],
          read_aheads: list[int], cold: bool = False, rounds: int = 1) -> list[SweepPoint]:
    """Worker counts at the default settings, then the other chunk sizes, queue depths and read-ahead depths
    at the best count; cold: each run from an emptied page cache; rounds: runs of each point, the median
    run counts."""
    chunk, depth, ahead = DEFAULTS

    def point(workers: int, settings: tuple[int, int, int]) -> SweepPoint:
        return _sweep_point(tree, work, workers, settings, cold, rounds)

    points = [point(w, DEFAULTS) for w in worker_counts]
    best = recommend(points)
    points += [point(best.workers, (c, depth, ahead)) for c in chunk_sizes if c != chunk]
    points += [point(best.workers, (chunk, d, ahead)) for d in queue_depths if d != depth]
    points += [point(best.workers, (chunk, depth, a)) for a in read_aheads if a != ahead]
    return points


def _sweep_point(tree: Path, work: Path, workers: int, settings: tuple[int, int, int], cold: bool,
                 rounds: int = 1) -> SweepPoint:
    done = []
    for _ in range(rounds):
        prepare(corpus_files(tree), cold)
        done.append(run_etl(tree, work / "sweep", workers, *settings))
    r = median_run(done)
    rss = r["report"]["peak_rss_mb"]
    chunk, depth, ahead = settings
    return SweepPoint(workers, chunk, r["images_per_second"], 100 * r["cpu_seconds"] / r["seconds"] / usable_cores(),
                      rss["coordinator"] + rss["writer"] + workers * rss["worker_max"], depth, ahead,
                      r["runs_images_per_second"])


def recommend(points: list[SweepPoint]) -> SweepPoint:
    """The fewest workers within 3% of the best throughput (the rest of the machine stays free), with the
    default chunk size and queue depth unless only another setting comes that close."""
    best = max(p.images_per_second for p in points)
    near = [p for p in points if p.images_per_second >= 0.97 * best]
    return min(near, key=lambda p: (p.workers, p.settings != DEFAULTS, -p.images_per_second))


def plot(points: list[SweepPoint], path: Path) -> bool:
    """sweep.png, drawn with matplotlib (the optional 'plot' extra): images/s and parallel efficiency against
    workers, at the default chunk size and queue depth, with the ideal linear line and the other settings'
    points marked. False, and nothing written, without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no screen: draw to a file
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    main = sorted((p for p in points if p.settings == DEFAULTS), key=lambda p: p.workers)
    per_worker = main[0].images_per_second / main[0].workers  # the 1-worker images/s
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 7.5), height_ratios=(3, 2))
    _throughput_panel(top, points, main, per_worker)
    _efficiency_panel(bottom, points, main, per_worker)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlabel("workers")
    cores = usable_cores()
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        if cores <= main[-1].workers:
            ax.axvline(cores, color="grey", linestyle=":", linewidth=1)
    if cores <= main[-1].workers:
        left = cores < main[-1].workers
        bottom.annotate(f"{cores} usable cores", (cores, 0), xytext=(4 if left else -4, 4), textcoords="offset points",
                        fontsize=8, color="grey", ha="left" if left else "right")
    bottom.set_xlim(0.5, main[-1].workers + 0.5)
    top.set_title(f"etl tune: etl convert images/s by worker count ({cores} usable cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _beside(ax: Any, side: int) -> Any:
    """ax's data coordinates shifted DODGE points to the left (side -1) or right (+1), for drawing."""
    from matplotlib.transforms import offset_copy

    return offset_copy(ax.transData, fig=ax.figure, x=side * DODGE, units="points")


def _workers(n: int) -> str:
    return f"{n} worker" if n == 1 else f"{n} workers"


def _kind(p: SweepPoint) -> str | None:
    """Which setting a point varies from the defaults: 'chunk', 'queue depth', 'read-ahead', or None (the main
    line)."""
    if p.chunk_size != DEFAULTS[0]:
        return "chunk"
    if p.queue_depth != DEFAULTS[1]:
        return "queue depth"
    return "read-ahead" if p.read_ahead != DEFAULTS[2] else None


def _value(p: SweepPoint, kind: str) -> int:
    return {"chunk": p.chunk_size, "queue depth": p.queue_depth, "read-ahead": p.read_ahead}[kind]


def _throughput_panel(ax: Any, points: list[SweepPoint], main: list[SweepPoint], per_worker: float) -> None:
    """images/s against workers: the main line, the ideal linear line, the other settings labelled."""
    xs = [p.workers for p in main]
    ax.plot(xs, [per_worker * w for w in xs], linestyle="--", color="grey", label="ideal: 1-worker images/s x workers")
    ax.plot(xs, [p.images_per_second for p in main], "o-", color="tab:blue", linewidth=2,
            label=f"chunk size {DEFAULTS[0]}, queue depth {DEFAULTS[1]}, read-ahead {DEFAULTS[2]} (defaults)")
    for kind, (marker, colour, side) in _OTHERS.items():
        pts = [p for p in points if _kind(p) == kind]
        if pts:
            ax.plot([p.workers for p in pts], [p.images_per_second for p in pts], marker, color=colour,
                    markersize=8, linestyle="none", transform=_beside(ax, side),
                    label=f"other {kind} {'sizes' if kind == 'chunk' else 'values'} (at {_workers(pts[0].workers)})")
    _label_others(ax, sorted((p for p in points if _kind(p)), key=lambda p: (p.workers, p.images_per_second)))
    best = recommend(points)
    kind = _kind(best)
    ax.plot([best.workers], [best.images_per_second], "o", markersize=16, markerfacecolor="none",
            markeredgecolor="tab:red", markeredgewidth=1.5, label="recommended", zorder=5,
            transform=ax.transData if kind is None else _beside(ax, _OTHERS[kind][2]))
    ax.set_ylabel("images/s")
    ax.set_ylim(0, max(max(p.images_per_second for p in points), per_worker * xs[-1]) * 1.12)
    ax.legend(loc="upper left", fontsize=8)


def _label_others(ax: Any, others: list[SweepPoint]) -> None:
    """Names each other setting's point ("chunk 16", "queue depth 4") to its left, with a leader line; where
    they share x the labels stack in order of images/s, 12 points apart at least."""
    for w in sorted({p.workers for p in others}):
        pts = [p for p in others if p.workers == w]
        for k, p in enumerate(pts):
            kind = _kind(p)
            assert kind is not None
            _, colour, side = _OTHERS[kind]
            ax.annotate(f"{kind} {_value(p, kind)}", (w, p.images_per_second),
                        xycoords=_beside(ax, side), xytext=(-2 * DODGE - 24, 12 * (k - (len(pts) - 1) / 2)),
                        textcoords="offset points", ha="right", va="center", fontsize=8, color=colour,
                        bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.75},
                        arrowprops={"arrowstyle": "-", "color": colour, "linewidth": 0.6, "shrinkB": 5})


def _efficiency_panel(ax: Any, points: list[SweepPoint], main: list[SweepPoint], per_worker: float) -> None:
    """Parallel efficiency (images/s per worker over the 1-worker images/s) against workers."""
    def eff(p: SweepPoint) -> float:
        return p.images_per_second / p.workers / per_worker

    ax.axhline(1.0, linestyle="--", color="grey")
    ax.plot([p.workers for p in main], [eff(p) for p in main], "o-", color="tab:blue", linewidth=2)
    for kind, (marker, colour, side) in _OTHERS.items():
        pts = [p for p in points if _kind(p) == kind]
        ax.plot([p.workers for p in pts], [eff(p) for p in pts], marker, color=colour, linestyle="none",
                transform=_beside(ax, side))
    ax.set_ylabel("parallel efficiency\n(images/s per worker over 1 worker's)")
    ax.set_ylim(0, max(1.15, max(eff(p) for p in points) * 1.1))
