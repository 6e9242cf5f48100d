"""--exif-orientation: the tag read from Pillow-made JPEGs, and photos stored upright as Pillow's exif_transpose."""

import io
import json

import lmdb
import numpy as np
import pytest
from PIL import Image, ImageOps

from etl.orientation import exif_orientation, upright
from etl.settings import Settings

from .conftest import run_cli

ORIENTATIONS = range(1, 9)
WIDTH, HEIGHT = 48, 32  # not square: a quarter turn swaps them


def picture() -> np.ndarray:
    """No symmetry: each flip or turn gives another picture (a gradient each way and a bright corner)."""
    x = np.linspace(0, 200, WIDTH)[None, :]
    y = np.linspace(0, 120, HEIGHT)[:, None]
    rgb = np.stack([np.broadcast_to(x, (HEIGHT, WIDTH)), np.broadcast_to(y, (HEIGHT, WIDTH)),
                    np.full((HEIGHT, WIDTH), 60.0)], axis=2)
    rgb[:8, :8] = 255
    return rgb.astype(np.uint8)


def tagged_jpeg(orientation: int | None) -> bytes:
    """A JPEG as a phone writes it: the pixels as the sensor saw them, and the EXIF tag that says how to turn them."""
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    exif[0x010F] = "etl test camera"  # another IFD0 entry before it, as cameras write
    Image.fromarray(picture()).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_the_tag_is_read_as_pillow_reads_it(orientation):
    data = tagged_jpeg(orientation)
    assert exif_orientation(data) == Image.open(io.BytesIO(data)).getexif()[0x0112] == orientation


def test_no_tag_no_exif_and_not_a_jpeg_are_as_stored():
    plain = io.BytesIO()
    Image.fromarray(picture()).save(plain, "JPEG")
    png = io.BytesIO()
    Image.fromarray(picture()).save(png, "PNG")
    assert exif_orientation(tagged_jpeg(None)) == 1
    assert exif_orientation(plain.getvalue()) == 1
    assert exif_orientation(png.getvalue()) == 1
    assert exif_orientation(b"\xff\xd8\xff\xe1\x00\x08Exif\x00\x00") == 1  # cut short inside the segment


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_upright_turns_as_exif_transpose(orientation):
    im = Image.open(io.BytesIO(tagged_jpeg(orientation)))
    stored = np.asarray(im.convert("RGB"))
    assert np.array_equal(upright(stored, orientation), np.asarray(ImageOps.exif_transpose(im).convert("RGB")))


def test_the_setting_is_an_output_setting():
    """report.json's settings and the --resume check both read the output settings."""
    assert Settings(exif_orientation="apply").output_settings()["exif_orientation"] == "apply"


@pytest.fixture(scope="module")
def phone_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("phone")
    (root / "train" / "cam").mkdir(parents=True)
    for k in ORIENTATIONS:
        (root / "train" / "cam" / f"o{k}.jpg").write_bytes(tagged_jpeg(k))
    return root


def records(out) -> dict[str, np.ndarray]:
    """Each image's record, by file name, read back with the protobuf-free path: lmdb, the list, Pillow."""
    from etl.datum import decode_datum

    names = [line.split()[0].rsplit("/", 1)[-1] for line in (out / "train.txt").read_text().splitlines()]
    env = lmdb.open(str(out / "train_db"), readonly=True, lock=False)
    with env.begin() as txn:
        datums = [decode_datum(bytes(v)) for _, v in txn.cursor()]
    env.close()
    found = {}
    for name, datum in zip(names, datums, strict=True):
        pixels = np.asarray(Image.open(io.BytesIO(datum.data)).convert("RGB"))
        assert pixels.shape[:2] == (datum.height, datum.width)
        found[name] = pixels
    return found


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("encoding", ["jpg", "png"])
def test_apply_stores_each_photo_upright(phone_tree, tmp_path, encoding):
    """--resize-mode longer with a larger --size keeps each image's own size: the record is the upright photo."""
    out = tmp_path / "ds"
    proc = run_cli("convert", str(phone_tree / "train"), str(out), "--exif-orientation", "apply", "--resize-mode",
                   "longer", "--size", "64", "--encoding", encoding, "--val-pct", "0", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    for k, pixels in sorted(records(out).items()):
        im = Image.open(phone_tree / "train" / "cam" / k)
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        assert pixels.shape == expected.shape, k
        assert psnr(pixels, expected) > 35, k
    assert json.loads((out / "report.json").read_text())["settings"]["exif_orientation"] == "apply"


def test_ignore_by_default_stores_the_pixels_as_they_are(phone_tree, tmp_path):
    out = tmp_path / "ds"
    proc = run_cli("convert", str(phone_tree / "train"), str(out), "--width", "24", "--height", "16", "--val-pct", "0",
                   "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    stored = np.asarray(Image.fromarray(picture()).resize((24, 16), Image.BOX))
    for k, pixels in records(out).items():
        assert psnr(pixels, stored) > 30, k
    assert json.loads((out / "report.json").read_text())["settings"]["exif_orientation"] == "ignore"


def test_apply_with_a_fixed_size_resizes_the_upright_photo(phone_tree, tmp_path):
    """A squash to 24x16 of a photo that stands 32x48 once turned: the turn comes before the resize."""
    out = tmp_path / "ds"
    proc = run_cli("convert", str(phone_tree / "train"), str(out), "--width", "24", "--height", "16", "--val-pct", "0",
                   "--workers", "1", "--exif-orientation", "apply")
    assert proc.returncode == 0, proc.stderr
    for k, pixels in records(out).items():
        im = ImageOps.exif_transpose(Image.open(phone_tree / "train" / "cam" / k)).convert("RGB")
        assert psnr(pixels, np.asarray(im.resize((24, 16), Image.BOX))) > 30, k
