"""--resize-mode shorter and longer: records keep their image's aspect ratio, each Datum its own size."""

import io
import json

import lmdb
import numpy as np
import pytest
from PIL import Image

from etl.aspect import MAX_ASPECT, largest_output, target_size
from etl.codec import BadImage
from etl.converter import ImageConverter, WorkSpec
from etl.memory import output_pixels, record_bytes, worker_bytes
from etl.reader import LmdbDataset
from etl.settings import Settings

from .conftest import run_cli

# (width, height) of each image: landscape, portrait, small, large enough for a DCT-scaled decode, and a 1:20 strip
SIZES = {"wide": (90, 60), "tall": (40, 100), "small": (20, 20), "big": (300, 200), "strip": (10, 200)}


def smooth(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like picture: a few soft blobs of colour, so that resizes compare by PSNR."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    out = np.zeros((height, width, 3))
    for _ in range(4):
        cx, cy, r = rng.random(3) * [1, 1, 0.5] + [0, 0, 0.2]
        out += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)[..., None] * rng.integers(40, 120, 3)
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("aspect")
    for i, (name, (w, h)) in enumerate(SIZES.items()):
        for cls in ("a", "b"):
            (root / cls).mkdir(exist_ok=True)
            Image.fromarray(smooth(w, h, i)).save(root / cls / f"{name}.jpg", quality=95)
    return root


def read_back(out, caffe_pb2) -> dict[str, tuple[object, np.ndarray]]:
    """Each record by file name: the Datum as the protobuf runtime parses it, and its JPEG as Pillow decodes it."""
    names = [line.split()[0] for line in (out / "train.txt").read_text().splitlines()]
    env = lmdb.open(str(out / "train_db"), readonly=True, lock=False)
    with env.begin() as txn:
        values = [bytes(v) for _, v in txn.cursor()]
    env.close()
    found = {}
    for name, value in zip(names, values, strict=True):
        datum = caffe_pb2.Datum()
        datum.ParseFromString(value)
        found[name.split("/", 1)[-1] if "/" in name else name] = (datum, np.asarray(Image.open(io.BytesIO(datum.data))))
    return found


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def convert(tree, out, *args):
    proc = run_cli("convert", str(tree), str(out), "--val-pct", "0", "--workers", "2", "--chunk-size", "3", *args)
    assert proc.returncode == 0, proc.stderr
    return proc


def check_records(tree, out, caffe_pb2, expected: dict[str, tuple[int, int]]) -> None:
    """Each Datum carries its own size, its JPEG decodes to it, and shows the source resized (Pillow as referee)."""
    found = read_back(out, caffe_pb2)
    assert {n.rsplit("/", 1)[-1] for n in found} == {f"{k}.jpg" for k in expected}
    for path, (datum, pixels) in found.items():
        w, h = expected[path.rsplit("/", 1)[-1].removesuffix(".jpg")]
        assert (datum.width, datum.height, datum.channels, datum.encoded) == (w, h, 3, True), path
        assert pixels.shape == (h, w, 3), path
        source = Image.open(next(tree.rglob(path.rsplit("/", 1)[-1]))).convert("RGB")
        referee = np.asarray(source.resize((w, h), Image.LANCZOS if w < source.width else Image.BILINEAR))
        assert psnr(pixels, referee) > 32, path


def test_shorter_makes_the_shorter_side_size_and_keeps_the_aspect_ratio(tree, tmp_path, caffe_pb2):
    out = tmp_path / "ds"
    proc = convert(tree, out, "--resize-mode", "shorter", "--size", "32")
    expected = {"wide": (48, 32), "tall": (32, 80), "small": (32, 32), "big": (48, 32)}
    check_records(tree, out, caffe_pb2, expected)
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["resize_mode"] == "shorter" and report["settings"]["size"] == 32
    skipped = report["splits"]["train"]["skipped_files"]
    assert len(skipped) == 2 and all("10x200 image a 32x640 record" in s["reason"] for s in skipped)
    assert not (out / "mean.binaryproto").exists() and not (out / "mean.jpg").exists()
    assert any(n.startswith("no mean image") for n in report["notes"])
    assert "note: no mean image" in proc.stdout
    check = run_cli("verify", str(out))
    assert check.returncode == 0 and "OK" in check.stdout, check.stdout


def test_longer_caps_the_longer_side_and_keeps_smaller_images_as_they_are(tree, tmp_path, caffe_pb2):
    out = tmp_path / "ds"
    convert(tree, out, "--resize-mode", "longer", "--size", "64", "--shard-size", "4")
    assert run_cli("merge", str(out)).returncode == 0
    expected = {"wide": (64, 43), "tall": (26, 64), "small": (20, 20), "big": (64, 43), "strip": (3, 64)}
    check_records(tree, out, caffe_pb2, expected)
    assert not (out / "mean.binaryproto").exists()
    sizes = [(d.height, d.width, 3) for d, _ in read_back(out, caffe_pb2).values()]
    dataset = LmdbDataset(str(out / "train_db"))
    assert [dataset[i][0].shape for i in range(len(dataset))] == sizes  # etl's reader: each record at its own size
    check = run_cli("verify", str(out))
    assert check.returncode == 0 and "OK" in check.stdout, check.stdout


def test_verify_finds_a_record_whose_size_breaks_the_rule(tree, tmp_path):
    out = tmp_path / "ds"
    convert(tree, out, "--resize-mode", "shorter", "--size", "32")
    report = json.loads((out / "report.json").read_text())
    report["settings"]["size"] = 30
    (out / "report.json").write_text(json.dumps(report))
    check = run_cli("verify", str(out))
    assert check.returncode == 1 and "expected its shorter side 30 (--resize-mode shorter)" in check.stdout


@pytest.mark.parametrize("args, says", [
    (["--size", "256"], "--size goes with --resize-mode shorter or longer"),
    (["--resize-mode", "shorter"], "--resize-mode shorter makes each image's shorter side --size N: give --size"),
    (["--resize-mode", "longer"], "--resize-mode longer caps each image's longer side at --size N: give --size"),
    (["--resize-mode", "crop", "--size", "256"], "--resize-mode crop makes --width x --height"),
    (["--resize-mode", "shorter", "--size", "40", "--width", "100"],
     "--width and --height go with the fixed-size modes; --resize-mode shorter sizes each image by --size alone"),
])
def test_size_and_the_two_modes_go_together_or_are_refused_in_one_line(tree, tmp_path, args, says):
    out = tmp_path / "ds"
    proc = run_cli("convert", str(tree), str(out), *args)
    assert proc.returncode == 2 and says in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_target_sizes():
    assert target_size(400, 300, "shorter", 256) == (341, 256)
    assert target_size(100, 50, "shorter", 256) == (512, 256)  # smaller images are enlarged, as "resize 256" does
    assert target_size(400, 300, "longer", 256) == (256, 192)
    assert target_size(100, 50, "longer", 256) == (100, 50)  # smaller images are kept
    assert target_size(MAX_ASPECT * 10, 10, "shorter", 5) == (MAX_ASPECT * 5, 5)
    with pytest.raises(BadImage, match="more than 16 times the other"):
        target_size(10, MAX_ASPECT * 10 + 1, "shorter", 5)


def test_memory_is_budgeted_for_the_largest_record_a_mode_makes():
    fixed = Settings(width=224, height=224)
    longer = Settings(resize_mode="longer", size=1024)
    shorter = Settings(resize_mode="shorter", size=256)
    assert output_pixels(fixed) == 224 * 224
    assert output_pixels(longer) == 1024 * 1024  # an image kept at up to 1024 x 1024
    assert output_pixels(shorter) == MAX_ASPECT * 256 * 256  # the longest a kept aspect ratio may make
    assert record_bytes(longer) > 1024 * 1024 * 0.9 and worker_bytes(longer) > worker_bytes(fixed)
    spec = WorkSpec.for_split(longer, "train", None, False)
    assert spec.decode_pixels >= 4 * 1024 * 1024 and not spec.sum_pixels  # decode covers 2x; no mean is summed
    assert largest_output("squash", 300, 200, None) == (300, 200)


@pytest.mark.parametrize("mode, size, denom", [("shorter", 256, 8), ("longer", 256, 8), ("longer", 1024, 2),
                                               ("shorter", 1024, 2)])
def test_both_modes_use_the_dct_scaled_decode(mode, size, denom):
    """A 4000x3000 JPEG decoded at the coarsest scale that still covers its target."""
    spec = WorkSpec.for_split(Settings(resize_mode=mode, size=size), "train", None, False)
    assert ImageConverter(spec)._scale_chooser(4000, 3000) == denom


def test_a_size_too_large_for_memory_is_refused_naming_size_and_a_smaller_one_fits():
    from etl.errors import UsageError
    from etl.memory import check_memory, memory_need

    big = Settings(resize_mode="shorter", size=4096, workers=1)
    small = Settings(resize_mode="shorter", size=256, workers=1)
    room = memory_need(small, 1).peak
    with pytest.raises(UsageError, match="lower --size, --chunk-size"):
        check_memory(big, available=room)
    assert check_memory(small, available=room).workers == 1


def test_no_mean_is_budgeted_where_none_is_made():
    """--width and --height play no part in shorter and longer, and neither does the mean they would size."""
    from etl.memory import chunk_bytes, memory_need, writer_bytes

    small, huge = (Settings(resize_mode="shorter", size=256, width=w, height=w) for w in (224, 16384))
    assert memory_need(huge, 2) == memory_need(small, 2) and memory_need(huge, 2).mean_image == 0
    assert chunk_bytes(huge, summed=True) == chunk_bytes(huge, summed=False)
    fixed = Settings(width=224, height=224)
    assert memory_need(fixed, 2).mean_image > 0 and chunk_bytes(fixed, True) > chunk_bytes(fixed, False)
    assert writer_bytes(huge, 2) < writer_bytes(Settings(width=16384, height=16384), 2)


@pytest.mark.parametrize("mode, size", [("shorter", 33), ("longer", 45)])
def test_both_modes_take_the_jpeg_planes_path_odd_sizes_too(tree, mode, size, monkeypatch):
    """shorter and longer are squashes to each image's own size: a JPEG goes as its YCbCr planes (no RGB decode),
    as under squash and crop, also where the record's sides are odd (wide: 50x33, 45x30; tall: 33x82, 18x45)."""
    from collections import defaultdict

    from etl.codec import Codec
    from etl.datum import decode_datum
    from etl.messages import Item

    def no_pixel_decode(*_):
        raise AssertionError("took the RGB pixel path")

    monkeypatch.setattr(Codec, "decode", no_pixel_decode)
    conv = ImageConverter(WorkSpec.for_split(Settings(resize_mode=mode, size=size), "train", None, False))
    for name in ("wide", "tall"):
        data = (tree / "a" / f"{name}.jpg").read_bytes()
        value, _ = conv.convert_bytes(data, Item(0, name, 0), defaultdict(float))
        datum = decode_datum(value)
        pixels = np.asarray(Image.open(io.BytesIO(datum.data)))
        w, h = target_size(*SIZES[name], mode, size)
        assert (datum.width, datum.height) == (w, h) and pixels.shape == (h, w, 3) and (w % 2 or h % 2), name
        referee = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((w, h), Image.LANCZOS))
        assert psnr(pixels, referee) > 32, name
