"""Converter: one worker's per-image work: read the item, decode, resize, encode, wrap it in a Datum."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

from etl.aspect import VARIABLE_MODES, largest_output, target_size
from etl.caffeimage import CaffeImage
from etl.checkpoint import add_stamps, item_stamp
from etl.codec import BadImage, Codec, Decoded, decode_budget
from etl.datum import encode_caffe_datum, encode_datum
from etl.meansum import SumLayout
from etl.messages import ChunkResult, Failure, Item, Record, Task
from etl.orientation import TRANSPOSING, exif_orientation, upright
from etl.procs import peak_rss_kb
from etl.readahead import ReadAhead
from etl.settings import Settings
from etl.sources.base import Reader, Unreadable
from etl.testing import FaultHook
from etl.throttle import ReadGate
from etl.transform import Geometry, apply_geometry, dct_scale, fit_planes, noise_rng, plan_geometry

SPLIT_CODES = {"train": 0, "val": 1}
PLANAR_MODES = ("squash", "crop", *VARIABLE_MODES)  # the modes that never pad


@dataclass(frozen=True)
class WorkSpec:
    """What every worker of one split needs: where items come from and how to convert them.

    The fields after keep_page_cache are the options of the same name (etl.settings.Settings)."""

    reader: Reader | None
    split_code: int
    sum_pixels: bool  # the train split feeds the mean image
    keep_page_cache: bool
    width: int
    height: int
    resize_mode: str
    channels: int
    encoding: str
    quality: int
    seed: int
    max_pixels: int
    strict: bool  # refuse images that decode only with a warning
    read_ahead: int = 0  # images read ahead of the one in hand (etl.readahead)
    caffe_imageset: bool = False  # etl imageset: records as convert_imageset makes them (etl.caffeimage)
    keep_size: bool = False
    encode_type: str = ""
    resize_filter: str = "antialias"  # caffe: OpenCV's bilinear on the whole decode (etl.transform.box_factors)
    size: int | None = None  # --resize-mode shorter or longer: each record's size follows its image
    exif_orientation: str = "ignore"

    @property
    def decode_pixels(self) -> int:
        """The most pixels one decode may produce (etl.codec.decode_budget); a kept size, --max-pixels."""
        if self.keep_size:
            return self.max_pixels
        return decode_budget(*largest_output(self.resize_mode, self.width, self.height, self.size))

    def target(self, src_w: int, src_h: int) -> tuple[int, int, str]:
        """The output width and height for an upright src_w x src_h image, and the geometry mode that makes it."""
        if self.size is None:
            return self.width, self.height, self.resize_mode
        width, height = target_size(src_w, src_h, self.resize_mode, self.size)
        return width, height, "squash"  # to the image's own aspect ratio: a squash that distorts nothing

    @property
    def planar(self) -> bool:
        """Whether JPEGs can go through as YCbCr planes: colour JPEG output, and a mode that never pads (shorter
        and longer are squashes to each image's own size: target)."""
        return (self.encoding == "jpg" and self.channels == 3 and self.resize_mode in PLANAR_MODES
                and not self.caffe_imageset and self.resize_filter == "antialias")

    def caffe_image(self, codec: Codec) -> CaffeImage | None:
        if not self.caffe_imageset:
            return None
        size = None if self.keep_size else (self.width, self.height)
        return CaffeImage(codec, size, self.encoding != "none", self.encode_type, self.quality)

    @classmethod
    def for_split(cls, s: Settings, name: str, reader: Reader | None, keep_page_cache: bool) -> WorkSpec:
        options = {f.name: getattr(s, f.name) for f in fields(cls) if hasattr(s, f.name)}
        return cls(reader, SPLIT_CODES[name], sum_pixels=name == "train" and s.makes_mean,
                   keep_page_cache=keep_page_cache, **options)


class ImageConverter:
    """Turns items into Datum records; one per worker process.

    hold(index) marks the image in hand (-1: none) for the coordinator's hang check; fault is the test
    suite's fault hook (etl.testing)."""

    def __init__(self, spec: WorkSpec, gate: ReadGate | None = None, hold: Callable[[int], None] | None = None,
                 fault: FaultHook | None = None) -> None:
        self.spec = spec
        self.codec = Codec(spec.channels, spec.max_pixels, spec.decode_pixels)
        self.caffe = spec.caffe_image(self.codec)
        self.gate = gate
        self.hold = hold or (lambda index: None)
        self.fault = fault
        self.sums = SumLayout(spec.width, spec.height, spec.channels)
        self.ahead = ReadAhead(self._read, spec.read_ahead) if gate is not None else None

    def run_chunk(self, task: Task) -> ChunkResult:
        assert self.gate is not None and self.ahead is not None, "run_chunk reads items: give it a ReadGate"
        result = ChunkResult(task.chunk_id)
        waited_before, cpu_before = self.gate.waited, time.process_time()
        if self.spec.sum_pixels:
            result.pixel_sum = self.sums.zeros(self.sums.chunk_dtype(len(task.items)))
        self._stamp(task, result)
        self.ahead.plan(item for item in task.items if item.index not in task.give_up)
        for item in task.items:
            if item.index in task.give_up:
                result.failures.append(Failure(item.path, task.give_up[item.index]))
                continue
            self.hold(item.index)
            try:
                self._convert(item, result)
            except (BadImage, Unreadable) as exc:
                result.failures.append(Failure(item.path, str(exc)))
            except Exception as exc:  # a defect or an exotic file must cost this image only
                result.failures.append(Failure(item.path, f"unexpected error: {type(exc).__name__}: {exc}"))
        self.ahead.clear()
        self.hold(-1)
        if result.pixel_sum is not None:
            result.pixel_sum, result.sum_offset = self.sums.trim(result.pixel_sum)
        result.throttled_seconds = self.gate.waited - waited_before
        result.max_rss_kb = peak_rss_kb()
        result.cpu_seconds = time.process_time() - cpu_before
        return result

    def _read(self, item: Item) -> bytes:
        """One item's bytes through the gate (in the read-ahead thread, or in place)."""
        assert self.gate is not None
        if self.fault:
            self.fault.at_read(self.gate.reader.where(item.path))
        return self.gate.read(item)

    def _stamp(self, task: Task, result: ChunkResult) -> None:
        """Every item's stamp, given up or not, so that the chunk's covers exactly its items; all before the
        first read (and so before any read ahead), so that a file replaced in between reads as changed on
        resume, never the reverse."""
        assert self.gate is not None
        for item in task.items:
            if item.index not in task.give_up:
                self.hold(item.index)  # before the stat: one hangs where a read would (a dead network mount)
            result.input_stamp = add_stamps(result.input_stamp,
                                            item_stamp(item.index, self.gate.reader.stamp(item)))

    def _convert(self, item: Item, result: ChunkResult) -> None:
        assert self.gate is not None and self.ahead is not None
        t0 = time.thread_time()
        if self.fault:
            self.fault(self.gate.reader.where(item.path))
        data, read_elsewhere = self.ahead.take(item)
        self.hold(item.index)  # the time limit is for work: a throttled read is not a hang
        result.bytes_read += len(data)
        result.stage_seconds["read"] += time.thread_time() - t0 + read_elsewhere
        value, warning = self.convert_bytes(data, item, result.stage_seconds, result.pixel_sum,
                                            result.colour_conversions)
        result.records.append(Record(item.index, item.label, item.path, value, zlib.crc32(value)))
        if warning:
            result.warnings.append(Failure(item.path, warning))

    def convert_bytes(self, data: bytes, item: Item, times: dict[str, float], pixel_sum: np.ndarray | None = None,
                      colours: dict[str, int] | None = None) -> tuple[bytes, str | None]:
        """File bytes -> (serialized Datum, decoder warning); adds each stage's CPU time, the image to
        pixel_sum, and its colour conversion's kind to colours; BadImage for a warning under --strict.

        CPU time, not wall time: a throttled or slow read, or a worker waiting for a core, is not a
        stage's cost (throttling is reported on its own)."""
        if self.caffe is not None:
            return self._caffe_bytes(data, item, times, colours)
        spec, clock = self.spec, time.thread_time
        t1 = clock()
        turn = exif_orientation(data) if spec.exif_orientation == "apply" else 1
        chooser = self._scale_chooser if turn not in TRANSPOSING else self._turned_scale_chooser
        planes = self.codec.decode_planes(data, chooser) if spec.planar and turn == 1 else None
        decoded = self.codec.decode(data, chooser) if planes is None else None
        if turn != 1:
            decoded = _turned(decoded, turn)
        t2 = clock()
        src = planes or decoded
        assert src is not None
        width, height, mode = spec.target(src.src_w, src.src_h)
        geo = plan_geometry(src.src_w, src.src_h, width, height, mode)
        if planes is not None:
            out = fit_planes(planes, geo, width, height)
            t3 = clock()
            payload = self.codec.encode_planes(*out, spec.quality)
        else:
            out = (self._fit(decoded, geo, item, width, height),)
            t3 = clock()
            payload = self.codec.encode(out[0], spec.encoding, spec.quality)
        t4 = clock()
        value = encode_datum(spec.channels, height, width, payload, item.label, spec.encoding != "none")
        t5 = clock()
        times["decode"] += t2 - t1
        times["resize"] += t3 - t2
        times["encode"] += t4 - t3
        times["datum"] += t5 - t4
        warning = None if decoded is None else decoded.warning
        if warning and spec.strict:  # before the sum: a refused image must not count in the mean
            raise BadImage(f"decoded only with a warning (--strict): {warning}")
        if pixel_sum is not None:
            (self.sums.add_planes if planes is not None else self.sums.add_pixels)(pixel_sum, *out)
        _count_colour(decoded, colours)
        return value, warning

    def _caffe_bytes(self, data: bytes, item: Item, times: dict[str, float],
                     colours: dict[str, int] | None) -> tuple[bytes, str | None]:
        """convert_imageset's record: the file's own bytes when Caffe would store them, else decoded, resized
        when asked (squash, with --resize_filter: Caffe's bilinear by default), encoded or raw."""
        assert self.caffe is not None
        clock, t1 = time.thread_time, time.thread_time()
        through, warning = self.caffe.passes_through(item.path, data)
        if through:
            self._refuse_warned(warning)
            times["datum"] += clock() - t1
            return encode_caffe_datum(data, item.label, None), warning
        decoded = self.codec.decode(data, self._scale_chooser)
        self._refuse_warned(decoded.warning)
        t2 = clock()
        pixels = decoded.pixels
        if not self.spec.keep_size:
            geo = plan_geometry(decoded.src_w, decoded.src_h, self.spec.width, self.spec.height, "squash")
            pixels = self._fit(decoded, geo, item, self.spec.width, self.spec.height)
        t3 = clock()
        value = self.caffe.record(pixels, item.path, item.label)
        times["decode"] += t2 - t1
        times["resize"] += t3 - t2
        times["encode"] += clock() - t3
        _count_colour(decoded, colours)
        return value, decoded.warning

    def _refuse_warned(self, warning: str | None) -> None:
        if warning and self.spec.strict:
            raise BadImage(f"decoded only with a warning (--strict): {warning}")

    def _fit(self, decoded: Decoded | None, geo: Geometry, item: Item, width: int, height: int) -> np.ndarray:
        assert decoded is not None
        spec = self.spec
        rng = noise_rng(spec.seed, spec.split_code, item.index) if spec.resize_mode in ("fill", "half_crop") else None
        return apply_geometry(decoded.pixels, geo, width, height, rng, spec.resize_filter)

    def _scale_chooser(self, src_w: int, src_h: int) -> int:
        s = self.spec
        if s.keep_size or (s.resize_filter == "caffe" and src_w * src_h <= s.decode_pixels):
            return 1  # Caffe's cv::imread decodes whole; over the decode budget: the antialias filter's DCT scale
        width, height, mode = s.target(src_w, src_h)
        return dct_scale(src_w, src_h, plan_geometry(src_w, src_h, width, height, mode), s.decode_pixels)

    def _turned_scale_chooser(self, src_w: int, src_h: int) -> int:
        """The scale for a JPEG stored turned a quarter: its target is planned on the upright (swapped) size."""
        return self._scale_chooser(src_h, src_w)


def _count_colour(decoded: Decoded | None, colours: dict[str, int] | None) -> None:
    """An image written after a colour conversion (only the Pillow path names one) counts in colours."""
    if decoded is not None and decoded.colour is not None and colours is not None:
        colours[decoded.colour] = colours.get(decoded.colour, 0) + 1


def _turned(decoded: Decoded | None, orientation: int) -> Decoded:
    """The decoded image stood upright by its EXIF orientation, with its source size as the upright picture's."""
    assert decoded is not None
    pixels = np.ascontiguousarray(upright(decoded.pixels, orientation))  # OpenCV wants one block of memory
    if orientation in TRANSPOSING:
        return decoded._replace(pixels=pixels, src_w=decoded.src_h, src_h=decoded.src_w)
    return decoded._replace(pixels=pixels)
