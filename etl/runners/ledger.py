"""Ledger: the chunk bookkeeping of one split, free of processes: what to issue next, the window ahead of
the writer, retries after a worker's death, and the images given up on."""

from __future__ import annotations

from collections import deque

from etl.messages import Item, Task

MAX_CHUNK_RETRIES = 3


def chunks(items: list[Item], size: int, give_up: dict[int, str] | None = None) -> list[Task]:
    """Consecutive items, `size` to a task; give_up: items to report as skipped with their reason, unread."""
    tasks = [Task(k, tuple(items[start:start + size])) for k, start in enumerate(range(0, len(items), size))]
    if give_up:
        tasks = [t._replace(give_up={it.index: give_up[it.index] for it in t.items if it.index in give_up})
                 for t in tasks]
    return tasks


class TooManyLosses(Exception):
    """Workers keep stopping with no image in hand: not an image's fault, and replacing them would loop."""


class ChunkLedger:
    """Chunks are issued in order, at most `window` ahead of the last one written; a dead worker's chunks
    go back to the front, and an image that killed two workers (or a chunk that lost three) is given up."""

    def __init__(self, tasks: list[Task], window: int, workers: int) -> None:
        self.tasks, self.window, self.workers = tasks, window, workers
        self.next_new = self.written = 0
        self.retry: deque[Task] = deque()
        self.image_deaths: dict[int, int] = {}
        self.chunk_deaths: dict[int, int] = {}
        self.idle_losses = 0  # workers lost in a row with no image in hand and no chunk delivered

    def start_at(self, chunk: int) -> None:
        """Chunks before this one are committed already (a resumed run)."""
        self.next_new = self.written = chunk

    @property
    def done(self) -> bool:
        return self.written >= len(self.tasks)

    def has_work(self) -> bool:
        """Whether a task may be issued now (a retry, or a new chunk within the window)."""
        return bool(self.retry) or (self.next_new < len(self.tasks) and self.next_new - self.written < self.window)

    def next_task(self) -> Task:
        if self.retry:
            return self.retry.popleft()
        task = self.tasks[self.next_new]
        self.next_new += 1
        return task

    def delivered(self) -> None:
        """A worker sent a chunk on to the writer."""
        self.idle_losses = 0

    def written_one(self) -> None:
        """The writer took the next chunk in order."""
        self.written += 1

    def count_loss(self, item: int, reason: str) -> None:
        """A worker died with image `item` in hand (-1: none); TooManyLosses when they keep dying idle."""
        self.idle_losses = 0 if item >= 0 else self.idle_losses + 1
        if self.idle_losses > 2 * self.workers + 3:
            raise TooManyLosses(f"workers keep stopping before they convert anything ({self.idle_losses} in a row; "
                                f"the last one {reason})")

    def requeue(self, held: list[Task], item: int, reason: str, blameless: bool) -> None:
        """The dead worker's tasks (oldest first) go back to the front. blameless: it never reached the
        writer, so its chunk is not charged with the death."""
        if held and not blameless:
            held = [self._after_death(held[0], item, reason), *held[1:]]
        self.retry.extendleft(reversed(held))

    def _after_death(self, task: Task, item: int, reason: str) -> Task:
        give_up = dict(task.give_up)
        if any(it.index == item for it in task.items):
            self.image_deaths[item] = self.image_deaths.get(item, 0) + 1
            if self.image_deaths[item] >= 2:
                give_up[item] = f"worker process failed twice on this image (last: it {reason})"
        else:
            self.chunk_deaths[task.chunk_id] = self.chunk_deaths.get(task.chunk_id, 0) + 1
            if self.chunk_deaths[task.chunk_id] >= MAX_CHUNK_RETRIES:
                give_up.update({it.index: f"worker process failed repeatedly (last: it {reason})"
                                for it in task.items})
        return task._replace(give_up=give_up)
