"""Engine: the bench's one door into etl's converter and planner internals (the writer's is ceiling.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from etl.converter import ImageConverter, WorkSpec
from etl.messages import STAGES, Item
from etl.runners.ledger import chunks
from etl.settings import Settings, usable_cores
from etl.sources import plan, scan_tree

__all__ = ["converter", "converting", "labelled_files", "list_job", "scale_chooser", "usable_cores"]


def converter(size: int) -> ImageConverter:
    """etl's per-image kernel as one worker runs it: size x size squash, colour, JPEG q90, no mean."""
    options = Settings(width=size, height=size, resize_mode="squash", channels=3, encoding="jpg", quality=90, seed=0,
                       max_pixels=10**9, strict=False)
    return ImageConverter(WorkSpec.for_split(options, "val", None, keep_page_cache=False))


def converting(conv: ImageConverter) -> Callable[[bytes], tuple[bytes, str | None]]:
    """File bytes -> what the worker makes of them (serialized Datum, decoder warning); stage times dropped."""
    times = dict.fromkeys(STAGES, 0.0)
    return lambda b: conv.convert_bytes(b, Item(0, "", 0), times)


def scale_chooser(conv: ImageConverter) -> Callable[[int, int], int]:
    """The DCT scale the worker decodes at, for a source of (width, height)."""
    return conv._scale_chooser


def labelled_files(tree: Path) -> list[tuple[str, int]]:
    """(path, label) for every file of a class tree, labelled as `etl convert` labels them."""
    classes = scan_tree(str(tree))
    return [(str(tree / p), label) for label, files in enumerate(classes.values()) for p in files]


def list_job(root: str) -> tuple[Any, list[Any]]:
    """What the coordinator holds for a tree: its plan and every split's chunk list (64 per chunk)."""
    job = plan(Settings(train_dir=root, out_dir="x", val_pct=0.0))
    return job, [chunks(s.items, 64) for s in job.splits]
