"""Memory: buffers bounded in bytes, the check before any work, and a worker's decode within its budget."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zlib
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from PIL import Image, ImageFile

import etl
from etl import codec as codec_module
from etl.codec import BadImage, Codec
from etl.converter import ImageConverter, WorkSpec
from etl.memory import available_bytes, check_memory, memory_need
from etl.messages import Item
from etl.pagecache import InputSize, choose_page_cache
from etl.runners.local import SplitRun, writer_spec
from etl.runners.writer_process import gone
from etl.settings import Settings
from etl.sources import plan
from etl.transform import Geometry, dct_scale

from .conftest import gradient, run_cli
from .test_end_to_end import all_records

MB = 1 << 20
FULL = lambda w, h: 1  # noqa: E731 - no DCT scaling


def claimed_jpeg(width: int, height: int, progressive: bool = False) -> bytes:
    """A small JPEG whose frame header claims width x height: libjpeg allocates for the claim, and the
    scan data runs out after the first rows (a warning, so the file goes on to Pillow)."""
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    block, ImageFile.MAXBLOCK = ImageFile.MAXBLOCK, 1 << 22  # a progressive save of noise needs room
    try:
        Image.fromarray(pixels).save(buf, "JPEG", quality=90, progressive=progressive, subsampling=2)
    finally:
        ImageFile.MAXBLOCK = block
    data, pos = bytearray(buf.getvalue()), 2
    while data[pos + 1] not in (0xC0, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    data[pos + 5:pos + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def claimed_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (its data ends long before)."""
    buf = io.BytesIO()
    Image.fromarray(gradient(64, 64)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" and its 13 bytes
    ihdr[4:12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[12:33] = ihdr + zlib.crc32(bytes(ihdr)).to_bytes(4, "big")
    return bytes(data)


def spec(width: int = 224, height: int = 224, **options) -> WorkSpec:
    values = dict(reader=None, split_code=0, sum_pixels=False, keep_page_cache=True, width=width, height=height,
                  resize_mode="squash", channels=3, encoding="jpg", quality=90, seed=1, max_pixels=178_956_970,
                  strict=False)
    return WorkSpec(**{**values, **options})


def convert(data: bytes, work: WorkSpec | None = None) -> tuple[bytes, str | None]:
    return ImageConverter(work or spec()).convert_bytes(data, Item(0, "x", 0), defaultdict(float))


# -- 13: buffers bounded in bytes --------------------------------------------------------------------------

def split_run(tree: Path, out: Path, **options) -> SplitRun:
    s = Settings(train_dir=str(tree / "train"), out_dir=str(out), val_pct=0.0, **options)
    train = plan(s).splits[0]
    return SplitRun(train, s, out, False, choose_page_cache("keep", InputSize(0, 0), 0))


@pytest.mark.quick
def test_large_outputs_keep_fewer_chunks_in_flight(small_tree, tmp_path):
    """At 2048x2048 raw a chunk of 16 is 201 MB: twelve of them ahead of the writer would be 2.4 GB."""
    run = split_run(small_tree, tmp_path, width=2048, height=2048, encoding="none", chunk_size=16, workers=2)
    chunk = 16 * 2048 * 2048 * 3
    assert run.workers + 1 <= run.ledger.window and run.ledger.window * chunk <= 1024 * MB
    records = writer_spec(run.split, run.s, tmp_path, run.cache).commit_every
    assert 16 <= records and records * 2048 * 2048 * 3 <= 1024 * MB  # records waiting for a commit, too


@pytest.mark.quick
def test_imagenet_sized_outputs_keep_the_window_they_had(small_tree, tmp_path):
    run = split_run(small_tree, tmp_path, chunk_size=4, workers=8)
    assert run.ledger.window == (2 + 2) * 8 + 4
    assert writer_spec(run.split, run.s, tmp_path, run.cache).commit_every == 1000


def test_a_tiny_buffer_budget_changes_no_byte(small_tree, tmp_path):
    outs = []
    for name, extra in (("default", ()), ("tiny", ("--max-buffer-mb", "1"))):
        out = tmp_path / name
        proc = run_cli("convert", str(small_tree / "train"), str(out), "--val-pct", "20", "--workers", "3",
                       "--chunk-size", "4", "--quiet", *extra)
        assert proc.returncode == 0, proc.stderr
        outs.append(out)
    a, b = outs
    for split in ("train_db", "val_db"):
        assert all_records(a / split) == all_records(b / split)
    for name in ("train.txt", "val.txt", "mean.binaryproto", "mean.jpg"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    report = json.loads((b / "report.json").read_text())
    assert report["splits"]["train"]["writer"]["commits"] > 1  # the records awaiting a commit were bounded too


def test_settings_that_cannot_fit_are_refused_before_any_work(tmp_path):
    """16384x16384 in chunks of 4096 on 64 workers: terabytes. (--max-pixels 1 refuses every image from its
    header, so that without the check the run would only skip them.)"""
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "a" / "1.png").write_bytes(claimed_png(64, 64))
    proc = run_cli("convert", str(tmp_path / "in"), str(tmp_path / "out"), "--width", "16384", "--height", "16384",
                   "--workers", "64", "--chunk-size", "4096", "--max-pixels", "1", "--val-pct", "0", "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("etl: error: not enough memory for these settings: ")
    assert proc.stderr.count("\n") == 1 and "GB available" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_check_uses_the_memory_available(small_tree, tmp_path, monkeypatch):
    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(**{
        **real._asdict(), "available": 300 * MB, "free": 300 * MB}))
    with pytest.raises(etl.UsageError, match=r"^not enough memory for these settings: .* 0\.3 GB available"):
        etl.convert(str(small_tree / "val"), str(tmp_path / "out"), val_pct=0.0, workers=2, width=1024, height=1024,
                    progress=False)
    assert not (tmp_path / "out").exists()

@pytest.mark.quick
def test_a_writer_killed_by_sigkill_is_told_how_to_resume_with_less_memory():
    assert gone(-9) == ("the LMDB writer was killed by SIGKILL (out of memory?); --resume may take a lower "
                        "--max-buffer-mb or --workers")
    assert gone(1) == "the LMDB writer exited with code 1"


@pytest.mark.quick
def test_every_core_means_as_many_workers_as_memory_allows(monkeypatch):
    monkeypatch.setattr("etl.settings.usable_cores", lambda: 64)
    default, explicit = Settings(), Settings(workers=64)
    assert check_memory(default, available=1 << 40).workers == 64
    room = memory_need(default, 10).peak
    assert check_memory(default, available=room).workers == 10
    with pytest.raises(etl.UsageError, match="; at most 10 workers fit: pass --workers 10, or lower --chunk-size"):
        check_memory(explicit, available=room)
    with pytest.raises(etl.UsageError, match="not enough memory"):
        check_memory(default, available=memory_need(default, 1).peak - 1)


@pytest.mark.quick
@pytest.mark.parametrize(("cgroup", "files", "room"), [
    ("0::/job\n", {"job/memory.max": "3000", "job/memory.current": "2500", "job/memory.stat": "anon 2000\nfile 400\n",
                   "memory.max": "max"}, 900),
    ("4:memory:/job\n", {"memory/job/memory.limit_in_bytes": "3000", "memory/job/memory.usage_in_bytes": "2900",
                         "memory/job/memory.stat": "cache 1\ntotal_cache 100\n"}, 200),
    ("0::/\n", {}, None),
])
def test_available_memory_is_the_least_room_of_the_system_and_its_cgroups(tmp_path, cgroup, files, room):
    (tmp_path / "cgroup").write_text(cgroup)
    for name, text in files.items():
        (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / name).write_text(text)
    got = available_bytes(str(tmp_path / "cgroup"), str(tmp_path / "fs"))
    assert got == (room if room is not None else psutil.virtual_memory().available) or (
        room is None and abs(got - psutil.virtual_memory().available) < 64 * MB)



# -- 14: one worker's decode within a budget ------------------------------------------------------------

PEAK = """
import json, sys
from collections import defaultdict
from etl.converter import ImageConverter, WorkSpec
from etl.memory import available_bytes, check_memory, memory_need
from etl.messages import Item
from etl.procs import peak_rss_kb
data = open(sys.argv[1], "rb").read()
conv = ImageConverter(WorkSpec(None, 0, True, True, 224, 224, "squash", 3, "jpg", 90, 1, 178_956_970, False))
before = peak_rss_kb()
value, warning = conv.convert_bytes(data, Item(0, "x", 0), defaultdict(float), conv.sums.zeros())
print(json.dumps({"before": before, "peak": peak_rss_kb(), "warning": warning}))
"""


def peak_of(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_jpeg_claiming_13000x13000_costs_a_worker_little(tmp_path):
    """The file is 57 KB; a full decode of what it claims took 2.3 GB (Pillow, after libjpeg's warning)."""
    path = tmp_path / "claims-13000.jpg"
    path.write_bytes(claimed_jpeg(13000, 13000))
    peak = peak_of(path)
    assert peak["warning"]  # converted, as before, with libjpeg's warning
    assert peak["peak"] - peak["before"] < 150 * 1024, peak


def test_a_png_at_the_decode_budget_stays_near_seven_bytes_a_pixel(tmp_path):
    """8192x8192 RGBA: Pillow's copies (RGBA, the white composite, RGB) took 22 bytes a pixel at once."""
    path = tmp_path / "rgba.png"
    subprocess.run([sys.executable, "-c", "import sys; from PIL import Image; Image.new('RGBA', (8192, 8192), "
                    "(10, 200, 30, 100)).save(sys.argv[1], compress_level=1)", str(path)], check=True, timeout=120)
    peak = peak_of(path)
    assert peak["peak"] - peak["before"] < 8 * 8192 * 8192 // 1024, peak


@pytest.mark.quick
def test_a_png_over_the_decode_budget_is_refused_from_its_header():
    with pytest.raises(BadImage, match=r"^PNG of 9000x8000 pixels is over the decode budget of 67,108,864 pixels "
                                       r"per worker \(only a JPEG can be decoded at a smaller scale\)$"):
        convert(claimed_png(9000, 8000))


@pytest.mark.quick
def test_the_decode_budget_grows_with_the_output():
    with pytest.raises(BadImage, match="decode budget"):
        convert(claimed_png(9000, 8000), spec(2048, 2048))
    with pytest.raises(BadImage, match="cannot decode"):  # within 4 x 4096 x 4096 x 1.1: decoded, and truncated
        convert(claimed_png(9000, 8000), spec(4300, 4300))


@pytest.mark.quick
def test_a_progressive_jpeg_over_half_the_budget_is_refused():
    """libjpeg holds a progressive file's coefficients whole (6 bytes a pixel at 4:4:4), at any scale."""
    with pytest.raises(BadImage, match=r"^progressive JPEG of 6000x6000 pixels is over the decode budget of "
                                       r"33,554,432 pixels per worker for such files"):
        convert(claimed_jpeg(6000, 6000, progressive=True))


@pytest.mark.quick
def test_dct_scale_keeps_a_decode_within_the_budget():
    strip = Geometry(224, 224, 0, 0, 0, 0)
    assert dct_scale(224, 150_000, strip) == 1  # covering it needs the whole 33.6 M pixels
    assert dct_scale(224, 150_000, strip, budget=1 << 26) == 1
    assert dct_scale(224, 150_000, strip, budget=1 << 24) == 2  # 112 x 75,000: under the budget, not covering
    assert dct_scale(224, 150_000, strip, budget=1 << 20) == 8  # even 1/8 is over: the codec refuses it
    assert dct_scale(4000, 3000, strip, budget=1 << 26) == 8  # ordinary sizes: the covering scale, as before


@pytest.mark.quick
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "PA", "I;16", "I", "L", "1", "CMYK", "RGB"])
@pytest.mark.parametrize("channels", [1, 3])
def test_converting_in_bands_gives_the_same_pixels(monkeypatch, mode, channels):
    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 256, (37, 53, 4), dtype=np.uint8), "RGBA")
    im = base.convert(mode) if mode not in ("I;16", "I") else Image.fromarray(
        rng.integers(0, 65536, (37, 53), dtype=np.uint16 if mode == "I;16" else np.int32).astype(
            np.uint16 if mode == "I;16" else np.int32))
    buf = io.BytesIO()
    im.save(buf, "TIFF" if mode in ("CMYK", "PA", "I") else "PNG", **({"transparency": 7} if mode == "P" else {}))
    codec = Codec(channels, 10**9)
    whole = codec.decode(buf.getvalue(), FULL).pixels
    monkeypatch.setattr(codec_module, "BAND_PIXELS", 53 * 5)  # bands of 5 rows
    banded = codec.decode(buf.getvalue(), FULL).pixels
    assert banded.shape == whole.shape and (banded == whole).all()
