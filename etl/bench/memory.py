"""Memory: the coordinator's memory per listed image, traced in a fresh process per tree size."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from etl.bench.corpus import empty_tree
from etl.bench.endtoend import REPO


def listing_memory(work: Path, counts: tuple[int, int] = (10_000, 200_000)) -> dict[str, Any]:
    """The coordinator's memory for the image list, measured in a fresh process per count."""
    traced: list[int] = []
    for n in counts:
        root = work / f"list{n}"
        empty_tree(root, n)
        code = ("import tracemalloc; from etl.bench.engine import list_job; tracemalloc.start(); "
                f"held = list_job({str(root)!r}); print(tracemalloc.get_traced_memory()[0])")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
        traced.append(int(done.stdout.strip()))
        shutil.rmtree(root)
    return {"listed": list(counts), "traced_bytes": traced,
            "bytes_per_listed_image": (traced[1] - traced[0]) / (counts[1] - counts[0])}
