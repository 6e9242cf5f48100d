"""etl.reader on any Datum LMDB: Caffe-style databases built with the protobuf runtime (tests/caffe.proto), their
images made and decoded by Pillow and OpenCV, read back by LmdbDataset."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
import pytest
from PIL import Image

from etl.reader import INDEX_STRIDE, LmdbDataset

from .conftest import gradient, jpeg, write_db
from .test_imageset import images, run  # noqa: F401  (images: the fixture)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def caffe_datum(caffe_pb2, label: int, data: bytes = b"", encoded: bool = True, shape: tuple[int, ...] = (),
                floats: np.ndarray | None = None) -> bytes:
    """A Datum as Caffe's tools write one: encoded ones carry no size (channels 0), raw ones their CHW size."""
    d = caffe_pb2.Datum(label=label, encoded=encoded)
    if data:
        d.data = data
    if shape:
        d.channels, d.height, d.width = shape
    if floats is not None:
        d.float_data.extend(floats.ravel().tolist())
    return d.SerializeToString()


def opencv_rgb(data: bytes, flag: int) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    return img[:, :, ::-1] if img.ndim == 3 else img[:, :, None]


def test_each_encoded_record_decodes_in_its_own_colour_mode(tmp_path, caffe_pb2):
    rgb = np.roll(gradient(37, 23), 5, axis=0)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    files = {
        "colour jpeg": jpeg(rgb, quality=92),
        "gray jpeg": jpeg(rgb[:, :, 1], quality=92),
        "colour png": encoded(Image.fromarray(rgb), "PNG"),
        "gray png": encoded(Image.fromarray(rgb[:, :, 0]), "PNG"),
        "rgba png": encoded(Image.fromarray(rgba), "PNG"),
        "gray+alpha png": encoded(Image.fromarray(rgb[:, :, 0]).convert("LA"), "PNG"),
        "cmyk jpeg": encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95),
    }
    db = write_db(tmp_path / "db", [(b"%08d_%s" % (i, name.encode()), caffe_datum(caffe_pb2, i, data))
                                    for i, (name, data) in enumerate(files.items())])
    got = {name: LmdbDataset(db)[i][0] for i, name in enumerate(files)}
    for name, data in files.items():
        gray = name.startswith("gray")
        want = opencv_rgb(data, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
        assert got[name].shape == (23, 37, 1 if gray else 3), name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    # Pillow agrees on the lossless ones
    np.testing.assert_array_equal(got["colour png"], rgb)
    np.testing.assert_array_equal(got["rgba png"], rgb)
    np.testing.assert_array_equal(got["gray png"][:, :, 0], rgb[:, :, 0])
    assert np.abs(got["colour jpeg"].astype(int) - np.asarray(Image.open(io.BytesIO(files["colour jpeg"])))).max() <= 2


def test_a_channels_field_that_is_set_is_honoured(tmp_path, caffe_pb2):
    rgb = gradient(30, 20)
    colour, gray = jpeg(rgb, quality=90), jpeg(rgb[:, :, 0], quality=90)
    cmyk = encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    db = write_db(tmp_path / "db", [(b"00000000_0", caffe_datum(caffe_pb2, 0, colour, shape=(1, 20, 30))),
                                    (b"00000001_0", caffe_datum(caffe_pb2, 0, gray, shape=(3, 20, 30))),
                                    (b"00000002_0", caffe_datum(caffe_pb2, 0, cmyk, shape=(1, 20, 30))),
                                    (b"00000003_0", caffe_datum(caffe_pb2, 0, cmyk, shape=(3, 20, 30)))])
    ds = LmdbDataset(db)
    np.testing.assert_array_equal(ds[0][0], opencv_rgb(colour, cv2.IMREAD_GRAYSCALE))
    np.testing.assert_array_equal(ds[1][0], opencv_rgb(gray, cv2.IMREAD_COLOR))
    np.testing.assert_array_equal(ds[2][0], opencv_rgb(cmyk, cv2.IMREAD_GRAYSCALE))
    np.testing.assert_array_equal(ds[3][0], opencv_rgb(cmyk, cv2.IMREAD_COLOR))


def test_raw_bgr_and_float_records_come_back_hwc_rgb(tmp_path, caffe_pb2):
    rgb = gradient(9, 7)
    bgr_chw = np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))
    floats = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 7
    floats3 = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
    db = write_db(tmp_path / "db", [
        (b"00000000_1", caffe_datum(caffe_pb2, 1, bgr_chw.tobytes(), encoded=False, shape=(3, 7, 9))),
        (b"00000001_2", caffe_datum(caffe_pb2, 2, encoded=False, shape=(2, 3, 4), floats=floats)),
        (b"00000002_3", caffe_datum(caffe_pb2, 3, encoded=False, shape=(3, 2, 2), floats=floats3)),
        (b"00000003_4", caffe_datum(caffe_pb2, 4, b"\x01" * 5, encoded=False, shape=(3, 7, 9))),
    ])
    ds = LmdbDataset(db)
    img, label = ds[0]
    assert label == 1 and img.dtype == np.uint8
    np.testing.assert_array_equal(img, rgb)
    img, label = ds[1]
    assert label == 2 and img.dtype == np.float32
    np.testing.assert_array_equal(img, floats.transpose(1, 2, 0))
    np.testing.assert_array_equal(ds[2][0], floats3[::-1].transpose(1, 2, 0))  # 3 planes: BGR, as raw bytes
    with pytest.raises(ValueError, match="holds 5 bytes where its size 3x7x9"):
        ds[3]


def test_records_are_found_by_place_in_key_order_whatever_their_numbers(tmp_path, caffe_pb2):
    unused = {0, 5, 70, 119, 2 * INDEX_STRIDE}
    numbers = [n for n in range(3 * INDEX_STRIDE + 10) if n not in unused]
    pixels = np.zeros((2, 2), np.uint8)
    records = [(b"%08d_%d" % (n, n % 7), caffe_datum(caffe_pb2, n, encoded=False, shape=(1, 2, 2),
                                                     data=(pixels + n % 256).tobytes())) for n in numbers]
    ds = LmdbDataset(write_db(tmp_path / "db", records))
    assert len(ds) == len(numbers)
    for i in (0, 1, 4, 5, 118, 119, INDEX_STRIDE - 1, INDEX_STRIDE, 2 * INDEX_STRIDE - 1, len(numbers) - 1, -1):
        assert ds[i][1] == numbers[i], i
        assert int(ds[i][0][0, 0, 0]) == numbers[i] % 256
    assert [label for _, label in ds] == numbers
    with pytest.raises(IndexError):
        ds[len(numbers)]
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker gets
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert list(pool.map(_label_of, [clone] * 3, [0, 118, -1])) == [numbers[0], numbers[118], numbers[-1]]


def test_keys_that_are_not_numbers_are_read_in_key_order(tmp_path, caffe_pb2):
    names = [b"zebra", b"apple", b"mango/1.jpg", b"Apple"]
    records = [(name, caffe_datum(caffe_pb2, i, jpeg(gradient(8, 8)))) for i, name in enumerate(names)]
    ds = LmdbDataset(write_db(tmp_path / "db", records))
    assert [ds[i][1] for i in range(len(ds))] == [names.index(n) for n in sorted(names)]


def test_an_imageset_database_with_a_skipped_line_reads_to_its_last_record_in_colour(images, tmp_path):  # noqa: F811
    root, listed = images
    (root / "b/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    lines = listed.read_text().splitlines()
    lines.insert(1, "b/broken.jpg 0")
    listed.write_text("\n".join(lines) + "\n")
    run(root, listed, tmp_path / "db", "-encoded")  # encoded, no resize: each file's own bytes, channels 0
    ds = LmdbDataset(tmp_path / "db")
    kept = [line.rsplit(" ", 1) for line in lines if "broken" not in line]
    assert len(ds) == len(kept)
    for i, (path, label) in enumerate(kept):
        img, got = ds[i]
        data = (root / path).read_bytes()
        gray = "gray" in path
        assert got == int(label)
        np.testing.assert_array_equal(img, opencv_rgb(data, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR))


def test_datasets_on_the_same_files_share_one_environment(tmp_path, caffe_pb2):
    db = write_db(tmp_path / "db", [(b"%08d_0" % i, caffe_datum(caffe_pb2, i, jpeg(gradient(8, 6))))
                                    for i in range(3)])
    (tmp_path / "link").symlink_to(db)
    first, second, third = LmdbDataset(db), LmdbDataset(db), LmdbDataset(tmp_path / "link")
    assert first[0][1] == 0 and second[1][1] == 1 and third[2][1] == 2
    first.close()
    assert second[2][1] == 2 and len(third) == 3
    read, write = os.pipe()
    pid = os.fork()  # a fork DataLoader worker: the parent's datasets, the environment open in the parent
    if pid == 0:
        try:
            os.write(write, b"%d %d" % (second[1][1], LmdbDataset(db)[2][1]))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"1 2"
    second.close()
    third.close()
    assert LmdbDataset(db)[0][1] == 0  # the last one closed, a new one opens the files again


def _label_of(ds: LmdbDataset, i: int) -> int:
    return ds[i][1]


def test_verify_and_mean_read_a_database_a_dataset_has_open(tmp_path, caffe_pb2):
    from etl import verify
    from etl.dbmean import compute_mean

    pictures = [np.roll(gradient(12, 10), 3 * i, axis=1) for i in range(4)]
    db = write_db(tmp_path / "db", [(b"%08d_0" % i, caffe_datum(caffe_pb2, 0, encoded(Image.fromarray(im), "PNG")))
                                    for i, im in enumerate(pictures)])
    ds = LmdbDataset(db)
    assert ds[0][1] == 0  # its environment open in this process
    assert verify(db, progress=False).problems == []
    result = compute_mean(str(db), workers=2, inprocess_below=0, range_records=1)  # forked workers
    np.testing.assert_allclose(result.mean(), np.mean(pictures, axis=0)[:, :, ::-1].transpose(2, 0, 1), atol=1e-4)
    assert compute_mean(str(db), workers=1).count == 4
    assert ds[3][1] == 0
