"""Memory: what a run's buffers hold, estimated from its settings; the window in bytes; the check before any work."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import psutil

from etl.aspect import largest_output
from etl.codec import decode_budget
from etl.errors import UsageError
from etl.meansum import SumLayout
from etl.pagecache import cgroup_headroom
from etl.settings import Settings

MB = 1 << 20
GB = 1 << 30
PROCESS_BYTES = 96 * MB  # a worker or the writer before it holds any image (Python, numpy, OpenCV, libjpeg)
DECODE_BYTES_PER_PIXEL = 12  # per pixel of the decode budget: the file (up to 4) and the decode (7, measured)
OUTPUT_COPIES = 4  # an output image in a worker: its pixels, the resize step, the encoder's and the Datum's copies
RECORD_OVERHEAD = 512  # per record beside its image: Datum header, key, path, pickling
MEAN_IMAGE_BYTES_PER_PIXEL = 160  # the sum loaded back and made into mean.binaryproto and mean.jpg (measured: 150)
# JPEG bytes per output pixel at each quality: random noise at 4:2:0 (libjpeg-turbo), more than any photograph
JPEG_BYTES_PER_PIXEL = ((50, 0.45), (75, 0.65), (90, 0.95), (95, 1.2), (100, 2.0))


# etl imageset with no resize: images keep their size, budgeted at 0.5 MP each (ImageNet's average is 0.2 MP)
KEPT_SIZE_PIXELS = 1 << 19


def output_pixels(s: Settings) -> int:
    """The most pixels one record holds: --width x --height, or the largest image --resize-mode shorter or longer
    makes from --size."""
    width, height = largest_output(s.resize_mode, s.width, s.height, s.size)
    return width * height


def record_bytes(s: Settings) -> int:
    """One converted image as it crosses to the writer: the encoded image (an upper bound) and its envelope."""
    pixels = KEPT_SIZE_PIXELS if s.keep_size else output_pixels(s)
    if s.encoding == "jpg":
        qualities, rates = zip(*JPEG_BYTES_PER_PIXEL, strict=True)
        image = int(pixels * float(np.interp(s.quality, qualities, rates)))
    else:  # raw, or PNG (at worst a little over raw)
        image = pixels * s.channels * (101 if s.encoding == "png" else 100) // 100
    return image + RECORD_OVERHEAD


def sum_bytes(s: Settings, images: int) -> int:
    """One chunk's share of the mean: its pixel-sum vector, as a worker allocates and sends it."""
    layout = SumLayout(s.width, s.height, s.channels)
    return layout.size * np.dtype(layout.chunk_dtype(images)).itemsize


def chunk_bytes(s: Settings, summed: bool) -> int:
    """A chunk's results: chunk_size records, and the pixel sum when the split feeds the mean (train, where the
    settings make one)."""
    return s.chunk_size * record_bytes(s) + (sum_bytes(s, s.chunk_size) if summed and s.makes_mean else 0)


def window_chunks(s: Settings, workers: int, summed: bool) -> int:
    """Chunks issued ahead of the last one written: (queue depth + 2) x workers + 4, fewer where those would
    hold more than --max-buffer-mb, but never fewer than workers + 1 (every worker busy)."""
    full = (s.queue_depth + 2) * workers + 4
    return min(full, max(workers + 1, s.max_buffer_mb * MB // chunk_bytes(s, summed)))


def commit_records(s: Settings) -> int:
    """Records the writer gathers before a commit: --commit-every, fewer where they would hold more than
    --max-buffer-mb (it commits whole chunks, so at least one chunk)."""
    return min(s.commit_every, max(1, s.max_buffer_mb * MB // record_bytes(s)))


class MemoryNeed(NamedTuple):
    """The most each part of a run holds at once, in bytes."""

    workers: int
    per_worker: int  # decode buffers for the largest image allowed, the output image, a chunk and its pickle
    writer: int  # the chunks in flight, the records awaiting a commit, the mean's sum
    mean_image: int  # the coordinator making the mean files, after the workers and the writer have gone

    @property
    def converting(self) -> int:
        return self.workers * self.per_worker + self.writer

    @property
    def peak(self) -> int:
        return max(self.converting, self.mean_image)


def worker_bytes(s: Settings) -> int:
    decode = min(s.max_pixels, decode_budget(*largest_output(s.resize_mode, s.width, s.height, s.size)))
    decode *= DECODE_BYTES_PER_PIXEL
    output = OUTPUT_COPIES * output_pixels(s) * s.channels
    return PROCESS_BYTES + decode + output + 2 * chunk_bytes(s, True)  # the chunk's results, and them pickled


def writer_bytes(s: Settings, workers: int) -> int:
    in_flight = (window_chunks(s, workers, True) + 1) * chunk_bytes(s, True)  # + 1: one being unpickled
    batch = 2 * (commit_records(s) + s.chunk_size) * record_bytes(s)  # and LMDB's copy (large values never spill)
    size = SumLayout(s.width, s.height, s.channels).size if s.makes_mean else 0
    mean = size * 20  # the int64 sum; saving it takes a uint32 copy and its file image (more than a planes-only copy)
    return PROCESS_BYTES + in_flight + batch + mean


def memory_need(s: Settings, workers: int) -> MemoryNeed:
    mean_image = MEAN_IMAGE_BYTES_PER_PIXEL * s.width * s.height if s.makes_mean else 0
    return MemoryNeed(workers, worker_bytes(s), writer_bytes(s, workers), mean_image)


def available_bytes(proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Memory a run can take without swapping: the system's available memory, or less where this process's
    memory cgroup (a container, a Slurm job) or one above it has less room (its page cache counts as room)."""
    available = psutil.virtual_memory().available
    room = cgroup_headroom(cgroup_root, proc_cgroup, cache_is_room=True)
    return available if room is None else min(available, room)


def check_memory(s: Settings, available: int | None = None) -> MemoryNeed:
    """What the run will hold, with the workers it may start: refuses, before any work, settings whose buffers
    would not fit in the memory available (one line that says what each part needs and what to lower).
    --workers 0 (every core) starts as many workers as fit, at least one."""
    room = available_bytes() if available is None else available
    need = memory_need(s, s.worker_count)
    fits = next((n for n in range(need.workers, 0, -1) if memory_need(s, n).peak <= room), 0)
    if fits == need.workers or (fits and not s.workers):
        return memory_need(s, fits)
    knobs = "--max-buffer-mb" if s.resume else "--chunk-size, --max-buffer-mb or --max-pixels"  # resume: same output
    if s.size is not None and not s.resume:  # a record of up to largest_output: only a smaller --size shrinks it
        knobs = "--size, " + knobs
    if need.mean_image > room:
        fix = f"a {s.width}x{s.height} mean image alone needs {need.mean_image / GB:.1f} GB: choose a smaller size"
    elif fits:
        fix = f"at most {fits} workers fit: pass --workers {fits}, or lower {knobs}"
    else:
        fix = f"lower {knobs}"
    workers = f"{need.workers} worker{'s' if need.workers > 1 else ''}"
    raise UsageError(f"not enough memory for these settings: {need.peak / GB:.1f} GB needed ({workers} x "
                     f"{need.per_worker / GB:.2f} GB, the writer {need.writer / GB:.2f} GB), {room / GB:.1f} GB "
                     f"available; {fix}")
