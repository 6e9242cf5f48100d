"""Workers: the process pool that reads, decodes, resizes and encodes images, chunk by chunk."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import cv2
import numpy as np

from etl.codec import BadImage, Codec
from etl.datum import encode_datum
from etl.records import ChunkResult, Failure, Item, Record, Task
from etl.settings import Settings
from etl.transform import apply_geometry, dct_scale, noise_rng, plan_geometry

SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True)
class WorkSpec:
    """What every worker of one split needs: where files are and how to convert them."""

    root: str
    split_code: int
    width: int
    height: int
    resize_mode: str
    channels: int
    encoding: str
    quality: int
    seed: int
    max_pixels: int
    sum_pixels: bool  # the train split feeds the mean image

    @classmethod
    def for_split(cls, s: Settings, name: str, root: str) -> WorkSpec:
        return cls(root, SPLIT_CODES[name], s.width, s.height, s.resize_mode, s.channels,
                   s.encoding, s.quality, s.seed, s.max_pixels, sum_pixels=(name == "train"))


def read_file(path: str) -> bytes:
    """The file's bytes; the reasons a file cannot be read become BadImage messages."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        reason = "dangling symlink" if os.path.islink(path) else "file vanished since the scan"
        raise BadImage(f"cannot read: {reason}") from None
    except PermissionError:
        raise BadImage("cannot read: permission denied") from None
    except IsADirectoryError:
        raise BadImage("cannot read: is a directory") from None
    except OSError as exc:
        raise BadImage(f"cannot read: {exc.strerror or exc}") from None


class ImageConverter:
    """Turns items into Datum records; one per worker process."""

    def __init__(self, spec: WorkSpec) -> None:
        self.spec = spec
        self.codec = Codec(spec.channels, spec.max_pixels)

    def run_chunk(self, task: Task) -> ChunkResult:
        spec = self.spec
        result = ChunkResult(task.chunk_id)
        if spec.sum_pixels:
            result.pixel_sum = np.zeros((spec.height, spec.width, spec.channels), dtype=np.uint32)
        for item in task.items:
            try:
                self._convert(item, result)
            except BadImage as exc:
                result.failures.append(Failure(item.path, str(exc)))
        return result

    def _convert(self, item: Item, result: ChunkResult) -> None:
        t0 = time.perf_counter()
        data = read_file(os.path.join(self.spec.root, item.path))
        result.bytes_read += len(data)
        result.stage_seconds["read"] += time.perf_counter() - t0
        value, pixels, warning = self.convert_bytes(data, item, result.stage_seconds)
        result.records.append(Record(item.index, item.label, item.path, value))
        if result.pixel_sum is not None:
            np.add(result.pixel_sum, pixels, out=result.pixel_sum)
        if warning:
            result.warnings.append(Failure(item.path, warning))

    def convert_bytes(self, data: bytes, item: Item, times: dict[str, float]) -> tuple[bytes, np.ndarray, str | None]:
        """File bytes -> (serialized Datum, the pixels it holds, decoder warning); adds stage times."""
        spec, clock = self.spec, time.perf_counter
        t1 = clock()
        decoded = self.codec.decode(data, self._scale_chooser)
        t2 = clock()
        geo = plan_geometry(decoded.src_w, decoded.src_h, spec.width, spec.height, spec.resize_mode)
        rng = noise_rng(spec.seed, spec.split_code, item.index) if spec.resize_mode in ("fill", "half_crop") else None
        pixels = apply_geometry(decoded.pixels, geo, spec.width, spec.height, rng)
        t3 = clock()
        payload = self.codec.encode(pixels, spec.encoding, spec.quality)
        t4 = clock()
        value = encode_datum(spec.channels, spec.height, spec.width, payload, item.label, spec.encoding != "none")
        t5 = clock()
        times["decode"] += t2 - t1
        times["resize"] += t3 - t2
        times["encode"] += t4 - t3
        times["datum"] += t5 - t4
        return value, pixels, decoded.warning

    def _scale_chooser(self, src_w: int, src_h: int) -> int:
        s = self.spec
        return dct_scale(src_w, src_h, plan_geometry(src_w, src_h, s.width, s.height, s.resize_mode))


def worker_main(spec: WorkSpec, task_q: Any, result_q: Any) -> None:
    """A worker's life: take chunks until the None sentinel, send each result to the writer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    cv2.setNumThreads(1)  # one image per core: OpenCV's own threads would only contend
    converter = ImageConverter(spec)
    while (task := task_q.get()) is not None:
        result_q.put(converter.run_chunk(task))


class WorkerPool:
    """Starts, watches and stops the worker processes of one split."""

    def __init__(self, ctx: BaseContext, count: int, spec: WorkSpec, task_q: Any, result_q: Any) -> None:
        self.ctx, self.spec, self.task_q, self.result_q = ctx, spec, task_q, result_q
        self.procs: list[BaseProcess] = [self._start(i) for i in range(count)]

    def _start(self, number: int) -> BaseProcess:
        proc = self.ctx.Process(target=worker_main, args=(self.spec, self.task_q, self.result_q),
                                name=f"etl-worker-{number}", daemon=True)
        proc.start()
        return proc

    def dead(self) -> list[BaseProcess]:
        return [p for p in self.procs if p.exitcode is not None]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def stop(self, timeout: float = 10.0) -> None:
        """Ask each worker to finish (sentinel), then make sure none is left behind."""
        for _ in self.procs:
            self.task_q.put(None)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
            proc.join(1.0)
