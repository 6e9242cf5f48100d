"""Read-ahead depth against storage latency, read caps with read-ahead, and the memory read-ahead holds.

    python benchmarks/readahead_bench.py --src DIR [--repeat 24] [--depths 0,1,2,4,8] [--latencies 0,1,3]

The corpus: the files in DIR copied --repeat times (distinct files). Every run is cold (the page cache
dropped first; root only) and converts in-process with etl's own pipeline, 2 workers (every core here).
Storage latency is simulated by a folder source whose reader sleeps the given milliseconds before each
read, as a worker waits on a network filesystem or a busy disk (the sleep takes no CPU, as that wait
takes none); 0 is this machine's own disk. Then, at the default depth: --max-read-mbps at half the
uncapped read rate, and the workers' peak memory at depth 0 and at the deepest depth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl.bench.cold import drop_caches  # noqa: E402
from etl.bench.corpus import build_corpus  # noqa: E402
from etl.messages import Item  # noqa: E402
from etl.pipeline import convert  # noqa: E402
from etl.settings import build_settings  # noqa: E402
from etl.sources import registry  # noqa: E402
from etl.sources.folder import FileReader, FolderSource  # noqa: E402

LATENCY_SECONDS = float(os.environ.get("READAHEAD_BENCH_LATENCY_MS", "0")) / 1000


@dataclass(frozen=True)
class SlowReader(FileReader):
    """A file reader that waits before each read, as on storage with that latency."""

    latency: float = 0.0

    def read(self, item: Item, charge: Callable[[int], None], drop_cache: bool) -> bytes:
        time.sleep(self.latency)
        return super().read(item, charge, drop_cache)


class SlowFolder(FolderSource):
    def reader(self) -> FileReader:
        return SlowReader(self.root, LATENCY_SECONDS)


def drop_cache() -> None:
    """Every cold run as root: the page cache dropped whole (drop_caches), or the bench stops."""
    if not drop_caches():
        sys.exit("this benchmark's cold runs need root (/proc/sys/vm/drop_caches)")


def run(tree: Path, out: Path, **options: Any) -> dict[str, Any]:
    drop_cache()
    values = {"train_dir": str(tree), "out_dir": str(out), "val_pct": 0.0, "workers": 2, "overwrite": True, **options}
    return convert(build_settings(values), progress=False, start_method="fork")["splits"]["train"]


def depth_table(tree: Path, work: Path, depths: list[int], latencies: list[float], rounds: int) -> dict[str, Any]:
    global LATENCY_SECONDS
    table: dict[str, Any] = {}
    for ms in latencies:
        LATENCY_SECONDS = ms / 1000
        runs: dict[int, list[float]] = {d: [] for d in depths}
        for r in range(rounds):
            for d in depths if r % 2 == 0 else list(reversed(depths)):
                runs[d].append(run(tree, work / "out", read_ahead=d)["images_per_second"])
                print(f"latency {ms} ms, read-ahead {d}: {runs[d][-1]:.0f} images/s", flush=True)
        table[f"{ms:g} ms"] = {d: statistics.median(v) for d, v in runs.items()}
    LATENCY_SECONDS = 0.0
    return table


def read_cap(tree: Path, work: Path, depth: int) -> dict[str, float]:
    free = run(tree, work / "out", read_ahead=depth)
    mbps = free["bytes_read"] / free["wall_seconds"] / 1e6
    cap = round(mbps / 2, 1)
    capped = run(tree, work / "out", read_ahead=depth, max_read_mbps=cap)
    got = capped["bytes_read"] / capped["wall_seconds"] / 1e6
    return {"uncapped_mbps": mbps, "cap_mbps": cap, "achieved_mbps": got, "achieved_over_cap": got / cap}


def memory(tree: Path, work: Path, depths: list[int], files: list[Path]) -> dict[str, Any]:
    worker = {d: run(tree, work / "out", read_ahead=d)["peak_rss_mb"]["worker_max"] for d in (0, max(depths))}
    sizes = sorted(p.stat().st_size for p in files)
    return {"worker_peak_rss_mb": worker, "mean_image_mb": statistics.mean(sizes) / 1e6,
            "largest_image_mb": sizes[-1] / 1e6, "depth": max(depths)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True)
    ap.add_argument("--repeat", type=int, default=24)
    ap.add_argument("--depths", default="0,1,2,4,8")
    ap.add_argument("--latencies", default="0,1,3", help="milliseconds of simulated latency per read")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    latencies = [float(x) for x in args.latencies.split(",")]
    registry.SOURCES.insert(0, SlowFolder)  # the forked workers inherit it: the bench runs with fork
    with tempfile.TemporaryDirectory(prefix="etl-readahead-") as tmp:
        work = Path(tmp)
        tree = build_corpus(work, args.src, 0, args.repeat)
        files = sorted(p for p in tree.rglob("*") if p.is_file())
        res = {"files": len(files), "images_per_second": depth_table(tree, work, depths, latencies, args.rounds),
               "read_cap": read_cap(tree, work, 4), "memory": memory(tree, work, depths, files)}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
