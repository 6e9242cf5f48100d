"""Page cache: whether a run drops its read-once input and its written database from the page cache."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path
from typing import NamedTuple

import psutil

CACHE_SHARE = 0.5  # auto keeps the input cached only while what it adds fits in this share of free memory
UNLIMITED = 1 << 62  # cgroup v1 writes a number near 2**63 for "no limit"


class CacheChoice(NamedTuple):
    """Whether read-once input files and the written database leave the page cache after use, and why."""

    drop_input: bool
    drop_output: bool
    why: str


class InputSize(NamedTuple):
    """The input's estimated size, and how much of it is in the page cache already."""

    total: int
    cached: int


def choose_page_cache(mode: str, size: InputSize, free_bytes: int) -> CacheChoice:
    """drop: both; keep: neither; auto: the input stays when what it would add to the cache fits in
    CACHE_SHARE of the free memory (it evicts nobody, and the next run finds it cached; input that is
    cached already costs nothing more), and the database is dropped after each synced commit: it grows
    with the run, as large as the job, and a writer that reuses the pages it just dropped spends less
    CPU, the serial part, than one taking fresh pages (benchmarks/page_cache_bench.py)."""
    if mode != "auto":
        return CacheChoice(mode == "drop", mode == "drop", f"{mode} (set by the page_cache option)")
    adds = size.total - size.cached
    sizes = (f"~{size.total / 1e9:.1f} GB, ~{size.cached / 1e9:.1f} GB of it cached already, "
             f"{free_bytes / 1e9:.1f} GB of memory free")
    if adds <= CACHE_SHARE * free_bytes:
        return CacheChoice(False, True, f"auto: input kept ({sizes}); database dropped after each commit")
    return CacheChoice(True, True, f"auto: input dropped ({sizes}); database dropped after each commit")


def estimate_input(sample: list[str], count: int) -> InputSize:
    """Total and cached bytes of `count` files, from a sample of their paths (stat'ing all of ImageNet
    takes seconds); files that cannot be read are left out (the workers will report them)."""
    sizes, cached = [], []
    for path in sample:
        try:
            size = os.stat(path).st_size
        except OSError:
            continue
        sizes.append(size)
        cached.append(round(size * resident_share(path, size)))
    return scaled_sample(sizes, cached, count)


def scaled_sample(sizes: list[int], cached: list[int], count: int) -> InputSize:
    """Total and cached bytes of `count` items from a sample's sizes and cached bytes (none: nothing)."""
    if not sizes:
        return InputSize(0, 0)
    return InputSize(round(sum(sizes) / len(sizes) * count), round(sum(cached) / len(sizes) * count))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
MAP_FAILED = ctypes.c_void_p(-1).value


def resident_share(path: str, size: int, offset: int = 0) -> float:
    """The share of a file's pages (those of bytes [offset, offset + size)) in the page cache (mincore);
    0.0 where that cannot be told."""
    start = offset - offset % mmap.PAGESIZE  # mmap maps whole pages
    offset, size = start, size + offset - start
    if size <= 0:
        return 0.0
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0.0
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
        if addr in (None, MAP_FAILED):
            return 0.0
        try:
            pages = -(-size // mmap.PAGESIZE)
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                return 0.0
            return sum(b & 1 for b in vec) / pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def free_memory_bytes(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """Memory that caching can fill without evicting anything: the system's free memory, or less where
    this process's cgroup (a container, a Slurm job) or one above it leaves less room, since a cgroup's
    page cache counts against its limit."""
    free = psutil.virtual_memory().free
    headroom = cgroup_headroom(cgroup_root, proc_cgroup)
    return free if headroom is None else min(free, headroom)


def cgroup_headroom(cgroup_root: str, proc_cgroup: str, cache_is_room: bool = False) -> int | None:
    """The least (limit - usage) of this process's memory cgroup and its parents; None without a limit.
    cgroup v2 ("0::/path": memory.max, memory.current) and v1 ("N:...memory...:/path" under memory/:
    memory.limit_in_bytes, memory.usage_in_bytes). cache_is_room: the cgroup's page cache (memory.stat's
    file, total_cache in v1) counts as room too, as it does for memory a process allocates."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":
            rooms += _headrooms(Path(cgroup_root), path, ("memory.max", "memory.current", "file"), cache_is_room)
        elif "memory" in controllers.split(","):
            rooms += _headrooms(Path(cgroup_root, "memory"), path,
                                ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_cache"), cache_is_room)
    return min(rooms) if rooms else None


def _headrooms(mount: Path, path: str, names: tuple[str, str, str], cache_is_room: bool) -> list[int]:
    limit_file, usage_file, cache_key = names
    rooms = []
    level = mount / path.strip("/")
    while True:
        try:
            limit = (level / limit_file).read_text().strip()
            usage = int((level / usage_file).read_text())
            if limit.isdigit() and int(limit) < UNLIMITED:  # v2 writes "max" for no limit
                rooms.append(max(0, int(limit) - usage + (_cache(level, cache_key) if cache_is_room else 0)))
        except (OSError, ValueError):
            pass  # not mounted here, or no such file at this level
        if level == mount or level == level.parent:
            return rooms
        level = level.parent


def _cache(level: Path, key: str) -> int:
    stat = dict(line.split() for line in (level / "memory.stat").read_text().splitlines())
    return int(stat.get(key, 0))
