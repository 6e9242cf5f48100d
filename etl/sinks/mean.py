"""Mean sink: the train split's integer pixel sum, added up chunk by chunk and checkpointed with each commit."""

from __future__ import annotations

import numpy as np

from etl.checkpoint import Checkpoint, damaged
from etl.meansum import SumLayout
from etl.messages import ChunkResult


class MeanSink:
    """Adds each chunk's sum; saved at every commit so that a resume carries on from the exact sum."""

    def __init__(self, layout: SumLayout, checkpoint: Checkpoint, split: str) -> None:
        self.layout, self.checkpoint, self.split = layout, checkpoint, split
        self.total: np.ndarray | None = None

    def resume(self, chunks: int, required: bool = False) -> None:
        """The sum saved at that commit; required: records were committed, so it must be there."""
        self.total = self.checkpoint.load_sum(self.split, chunks, self.layout.size, required)
        if self.total is not None and self.total.ndim == 3:  # written before planes were summed
            try:
                self.total = self.layout.from_pixel_sum(self.total)
            except ValueError as exc:  # not this layout's (H, W, C)
                raise damaged(self.checkpoint.path(f"{self.split}.sum.{chunks}.npy"), exc) from None

    def add(self, result: ChunkResult) -> None:
        if result.pixel_sum is None:
            return
        if self.total is None:
            self.total = self.layout.zeros(np.int64)
        self.total[result.sum_offset:] += result.pixel_sum

    def save(self, chunks: int) -> None:
        if self.total is not None:
            self.checkpoint.save_sum(self.split, chunks, self.layout.trim(self.total)[0])
