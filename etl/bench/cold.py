"""Cold: the corpus out of the page cache before a run, as a real conversion finds its input, and proof of it."""

from __future__ import annotations

import os
from pathlib import Path

from etl.bench.corpus import warm
from etl.errors import UsageError
from etl.pagecache import resident_share

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_caches() -> bool:
    """Sync, then drop the whole page cache (root only); False where it cannot be written (not root, or a
    container without /proc/sys write access)."""
    os.sync()  # dirty pages cannot be dropped
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def advise_out(files: list[Path]) -> None:
    """Ask the kernel to drop these files' pages from the page cache (any user may; nothing else is dropped)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def evict(files: list[Path]) -> str:
    """Empty the page cache of these files: as root, drop the whole cache (the database and everything else
    too, as after a reboot); otherwise advise the kernel to drop each file's pages. Returns how; UsageError
    if mincore still finds more than 1% of the corpus cached (a tmpfs, whose pages are the files)."""
    how = "/proc/sys/vm/drop_caches"
    if not drop_caches():
        how = "posix_fadvise(DONTNEED) per file"
        advise_out(files)
    left = cached_share(files)
    if left > 0.01:
        raise UsageError(f"--cold: the corpus is still {100 * left:.0f}% in the page cache after {how} (a tmpfs "
                         "keeps its files there): set TMPDIR to a folder on a disk")
    return how


def cached_share(files: list[Path], sample: int = 512) -> float:
    """The share of the corpus's bytes in the page cache (mincore on an even sample of files)."""
    picked = files[:: max(1, len(files) // sample)]
    sizes = [p.stat().st_size for p in picked]
    cached = sum(size * resident_share(str(p), size) for p, size in zip(picked, sizes, strict=True))
    return cached / max(1, sum(sizes))


def prepare(files: list[Path], cold: bool) -> None:
    """Before a run: the corpus evicted (cold) or read once into the page cache (warm)."""
    if cold:
        evict(files)
    else:
        warm(files)
