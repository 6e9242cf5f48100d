"""`etl mean`: the mean of etl's, Caffe's and DIGITS' Datum LMDBs, checked against OpenCV (Caffe's decoder) and
the protobuf runtime compiled from tests/caffe.proto."""

import io
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from turbojpeg import TJCS_RGB, TurboJPEG

from etl import dbmean
from etl.cli import main
from etl.dbmean import RecordError, compute_mean, decode_jpeg, record_pixels, write_outputs
from etl.errors import UsageError
from etl.pipeline import convert
from etl.procs import mp_context
from etl.settings import build_settings
from etl.synth import photo_like

from .conftest import write_db
from .test_end_to_end import all_records

RNG_SEED = 5


def photo(width: int, height: int, seed: int) -> np.ndarray:
    return photo_like(np.random.default_rng(seed), width, height)


def pil_bytes(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def caffe_encoded(pb2, data: bytes, label: int = 0) -> bytes:
    """What convert_imageset --encoded writes: data, label and encoded, no channels/height/width."""
    return pb2.Datum(data=data, label=label, encoded=True).SerializeToString()


def caffe_raw(pb2, bgr: np.ndarray, label: int = 0) -> bytes:
    """What convert_imageset writes unencoded: CHW planes, blue first, with the sizes set."""
    chw = bgr.transpose(2, 0, 1) if bgr.ndim == 3 else bgr[None]
    return pb2.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2], data=chw.tobytes(),
                     label=label).SerializeToString()


def opencv_sum(pb2, db: Path) -> tuple[np.ndarray, int]:
    """The exact CHW sum as Caffe sees the records: protobuf, then cv::imdecode(data, -1) for encoded ones."""
    total, count = None, 0
    for _, value in all_records(db):
        datum = pb2.Datum()
        datum.ParseFromString(value)
        if datum.encoded:
            img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
            chw = img.transpose(2, 0, 1) if img.ndim == 3 else img[None]
        else:
            chw = np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width)
        total = chw.astype(np.uint64) if total is None else total + chw
        count += 1
    return total, count


def read_blob(pb2, path: Path) -> np.ndarray:
    blob = pb2.BlobProto()
    blob.ParseFromString(path.read_bytes())
    assert blob.num == 1
    return np.array(blob.data, dtype=np.float32).reshape(blob.channels, blob.height, blob.width)


def run_mean(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["mean", *args, "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def etl_datasets(small_tree, tmp_path_factory):
    """The small tree converted by etl: JPEG colour (the default), PNG gray, and raw CHW."""
    made = {}
    for encoding, channels in (("jpg", 3), ("png", 1), ("none", 3)):
        out = tmp_path_factory.mktemp("ds") / f"{encoding}{channels}"
        convert(build_settings({"train_dir": str(small_tree / "train"), "out_dir": str(out), "val_pct": 0.0,
                                "workers": 2, "encoding": encoding, "channels": channels, "width": 48,
                                "height": 40}), progress=False)
        made[encoding, channels] = out / "train_db"
    return made


@pytest.mark.parametrize("kind", [("jpg", 3), ("png", 1), ("none", 3)])
def test_the_mean_of_an_etl_dataset_is_its_exact_sum_over_its_count(caffe_pb2, etl_datasets, tmp_path, kind, capsys):
    db = etl_datasets[kind]
    code, _, err = run_mean(capsys, str(db), str(tmp_path / "m.binaryproto"))
    assert code == 0, err
    total, count = opencv_sum(caffe_pb2, db)
    assert count == len(all_records(db)) > 30
    np.testing.assert_array_equal(read_blob(caffe_pb2, tmp_path / "m.binaryproto"), (total / count).astype(np.float32))
    assert total.shape == (kind[1], 40, 48)


@pytest.mark.quick
def test_the_fast_jpeg_path_gives_opencvs_pixels_for_every_kind_of_jpeg():
    """libjpeg-turbo through PyTurboJPEG and OpenCV's imdecode(-1): the same pixels, or the file goes to OpenCV."""
    im = Image.fromarray(photo(67, 45, RNG_SEED))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: imdecode(-1) ignores it, as PyTurboJPEG does
    kinds = {f"q{q} sub{s}": pil_bytes(im, "JPEG", quality=q, subsampling=s) for q in (75, 97) for s in (0, 1, 2)}
    kinds |= {"progressive": pil_bytes(im, "JPEG", quality=90, progressive=True),
              "gray": pil_bytes(im.convert("L"), "JPEG", quality=90),
              "exif rotated": pil_bytes(im, "JPEG", quality=90, exif=exif.tobytes())}
    for name in ("440", "411"):
        factor = getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{name}", None)
        if factor is not None:
            bgr = np.asarray(im)[:, :, ::-1]
            kinds[name] = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor])[1]
    unusual = {"cmyk": pil_bytes(im.convert("CMYK"), "JPEG", quality=90)}
    damaged = bytearray(kinds["q75 sub2"])
    damaged[len(damaged) // 2] ^= 0xFF  # OpenCV decodes it anyway; PyTurboJPEG may warn: then OpenCV decodes it
    tj = TurboJPEG()
    for name, data in (kinds | unusual | {"damaged": damaged}).items():
        data = bytes(data)
        ours = record_pixels(encoded_datum(data), tj)
        theirs = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(ours, theirs.reshape(ours.shape), err_msg=name)
        assert ours.shape[2] == (1 if name == "gray" else 3), name
        if name != "damaged":
            assert (decode_jpeg(data, tj) is None) == (name in unusual), name  # the fast path is the one checked
    cut = kinds["q75 sub2"][: len(kinds["q75 sub2"]) * 2 // 3]
    assert cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_UNCHANGED) is None  # OpenCV 5 refuses it
    with pytest.raises(RecordError, match="not an image OpenCV can decode"):
        record_pixels(encoded_datum(cut), tj)


@pytest.mark.quick
def test_an_rgb_coded_jpeg_takes_the_fast_path_in_the_mean_and_the_reader_with_opencvs_and_pillows_pixels():
    """An Adobe marker with transform 0 says the JPEG's components are R, G, B, not YCbCr: libjpeg-turbo decodes it
    as OpenCV and Pillow do, so neither etl mean nor the reader sends it to OpenCV (only CMYK and YCCK go)."""
    from etl.datum import Datum
    from etl.reader import datum_pixels

    adobe_rgb = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, transform 0: RGB-coded
    tj = TurboJPEG()
    for subsampling in (0, 2):
        plain = pil_bytes(Image.fromarray(photo(67, 45, RNG_SEED)), "JPEG", quality=90, subsampling=subsampling)
        jfif_end = 4 + int.from_bytes(plain[4:6], "big")  # a JFIF marker would make libjpeg read YCbCr anyway
        data = plain[:2] + adobe_rgb + plain[jfif_end:]
        assert tj.decode_header(data)[3] == TJCS_RGB
        opencv_bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        pillow_rgb = np.asarray(Image.open(io.BytesIO(data)))
        np.testing.assert_array_equal(opencv_bgr[:, :, ::-1], pillow_rgb)  # the referees agree
        fast = decode_jpeg(data, tj)
        assert fast is not None
        np.testing.assert_array_equal(fast, opencv_bgr)
        np.testing.assert_array_equal(record_pixels(encoded_datum(data), tj), opencv_bgr)
        np.testing.assert_array_equal(datum_pixels(Datum(0, 0, 0, data, 0, True), tj), pillow_rgb)
        gray = datum_pixels(Datum(1, 45, 67, data, 0, True), tj)[:, :, 0]
        np.testing.assert_array_equal(gray, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE))


def encoded_datum(data: bytes) -> bytes:
    from etl.datum import encode_datum

    return encode_datum(0, 0, 0, data, 0, True)


@pytest.fixture
def caffe_db(caffe_pb2, tmp_path):
    """convert_imageset's way: keys '%08d_<path>', encoded records without sizes, mixed with raw records."""
    records = []
    for i in range(10):
        img = Image.fromarray(photo(36, 28, i))
        data = pil_bytes(img, "JPEG", quality=80 + i, subsampling=i % 3) if i % 3 else pil_bytes(img, "PNG")
        value = caffe_raw(caffe_pb2, np.asarray(img)[:, :, ::-1].copy(), i) if i in (4, 7) else \
            caffe_encoded(caffe_pb2, data, i)
        records.append((b"%08d_n0%d/img_%d.JPEG" % (i, i % 2, i), value))
    return write_db(tmp_path / "caffe_db", records)


@pytest.mark.quick
def test_a_caffe_made_database_of_jpeg_png_and_raw_records(caffe_pb2, caffe_db, tmp_path, capsys):
    code, out, err = run_mean(capsys, str(caffe_db), str(tmp_path / "mean.binaryproto"))
    assert code == 0, err
    total, count = opencv_sum(caffe_pb2, caffe_db)
    assert count == 10
    blob = read_blob(caffe_pb2, tmp_path / "mean.binaryproto")
    np.testing.assert_array_equal(blob, (total / count).astype(np.float32))
    pixels = count * 28 * 36
    expected = [f"mean_value channel [{c}]:{int(total[c].sum()) / pixels:g}" for c in range(3)]
    assert out.splitlines() == ["Number of channels: 3", *expected]  # compute_image_mean's lines


@pytest.mark.quick
@pytest.mark.parametrize("kind", ["gray jpeg", "rgba png"])
def test_gray_jpegs_stay_one_channel_and_png_alpha_stays_as_caffe_keeps_them(caffe_pb2, tmp_path, kind, capsys):
    records = []
    for i in range(4):
        img = Image.fromarray(photo(30, 20, i))
        data = pil_bytes(img.convert("L"), "JPEG", quality=90) if kind == "gray jpeg" else \
            pil_bytes(img.convert("RGBA"), "PNG")
        records.append((b"%08d_x.png" % i, caffe_encoded(caffe_pb2, data)))
    db = write_db(tmp_path / "db", records)
    code, out, err = run_mean(capsys, str(db), str(tmp_path / "g.binaryproto"))
    assert code == 0, err
    total, count = opencv_sum(caffe_pb2, db)
    assert total.shape[0] == (1 if kind == "gray jpeg" else 4)
    np.testing.assert_array_equal(read_blob(caffe_pb2, tmp_path / "g.binaryproto"), (total / count).astype(np.float32))
    with Image.open(tmp_path / "g.jpg") as jpg:
        assert (jpg.mode, jpg.size) == (("L" if kind == "gray jpeg" else "RGB"), (30, 20))


@pytest.mark.quick
@pytest.mark.parametrize("workers", [1, 2])
def test_records_of_another_size_stop_it_naming_the_first_odd_key(caffe_pb2, tmp_path, workers, capsys, monkeypatch):
    sizes = [(20, 16)] * 7 + [(20, 17)] + [(20, 16)] * 3 + [(21, 16)]
    records = [(b"%08d_k" % i, caffe_encoded(caffe_pb2, pil_bytes(Image.fromarray(photo(w, h, i)), "PNG")))
               for i, (w, h) in enumerate(sizes)]
    db = write_db(tmp_path / "db", records)
    # small ranges, processes even for a dozen records: the odd record is the first of its range
    monkeypatch.setattr("etl.dbmean.INPROCESS_BELOW", 0)
    monkeypatch.setattr("etl.dbmean.RANGE_LIMITS", (7, 7))
    code, out, err = run_mean(capsys, str(db), "--workers", str(workers))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("etl: error: record 00000007_k is 3x17x20 (channels x height x width), the first "
                          "record (00000000_k) is 3x16x20"), err


@pytest.mark.quick
def test_an_odd_record_inside_a_range_is_found_in_either_mode(caffe_pb2, tmp_path):
    sizes = [(20, 16)] * 9 + [(21, 16)] + [(22, 16)] * 2
    db = write_db(tmp_path / "db", [(b"%08d" % i, caffe_raw(caffe_pb2, photo(w, h, i)))
                                    for i, (w, h) in enumerate(sizes)])
    for workers in (1, 2):
        with pytest.raises(UsageError, match=r"^record 00000009 is 3x16x21 .* record \(00000000\) is 3x16x20"):
            compute_mean(str(db), workers, inprocess_below=0, range_records=4)


@pytest.mark.quick
def test_in_parallel_the_same_bytes_as_in_one_process(caffe_db, tmp_path, monkeypatch):
    pools = []
    monkeypatch.setattr(dbmean, "mp_context", lambda method: pools.append(method) or mp_context(method))
    one = compute_mean(str(caffe_db), 1)
    assert pools == []
    many = compute_mean(str(caffe_db), 2, inprocess_below=0, range_records=3)
    assert pools == ["fork"]  # four ranges in two worker processes
    assert many.count == one.count == 10
    write_outputs(one, tmp_path / "one.binaryproto")
    write_outputs(many, tmp_path / "many.binaryproto")
    for name in ("binaryproto", "jpg"):
        assert (tmp_path / f"one.{name}").read_bytes() == (tmp_path / f"many.{name}").read_bytes()


@pytest.mark.quick
@pytest.mark.parametrize("name, jpg", [("foo.binaryproto", "foo.jpg"), ("foo.proto", None), ("mean", None)])
def test_the_picture_comes_only_beside_a_binaryproto(caffe_db, tmp_path, name, jpg, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_mean(capsys, str(caffe_db), name)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["caffe_db", name] + ([jpg] if jpg else []))
    if jpg:
        with Image.open(tmp_path / jpg) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (36, 28))


@pytest.mark.quick
def test_without_an_output_file_it_only_prints(caffe_db, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_mean(capsys, str(caffe_db))
    assert code == 0 and out.startswith("Number of channels: 3\n")
    assert [p.name for p in tmp_path.iterdir()] == ["caffe_db"]


@pytest.mark.quick
def test_records_it_cannot_read_are_one_line_naming_their_key(caffe_pb2, tmp_path, capsys):
    good = caffe_encoded(caffe_pb2, pil_bytes(Image.fromarray(photo(20, 16, 1)), "PNG"))
    cases = {
        "not an image": (caffe_encoded(caffe_pb2, b"<html>not found</html>"),
                         "holds data that is not an image OpenCV can decode"),
        "not a datum": (b"\x22\x10abc", "is not a Datum"),
        "short raw": (caffe_pb2.Datum(channels=3, height=16, width=20, data=b"\0" * 10).SerializeToString(),
                      "holds 10 bytes where its size 3x16x20 (channels x height x width) needs 960"),
        "float": (caffe_pb2.Datum(channels=1, height=2, width=2, float_data=[0.5] * 4).SerializeToString(),
                  "float_data"),
    }
    for name, (bad, words) in cases.items():
        db = write_db(tmp_path / name.replace(" ", "_"), [(b"a", good), (b"b\xffad", bad), (b"c", good)])
        code, _, err = run_mean(capsys, str(db))
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith("etl: error: record b\\xffad ") and words in err, err


@pytest.mark.quick
def test_missing_empty_and_non_lmdb_paths_are_one_line(tmp_path, capsys):
    empty = write_db(tmp_path / "empty_db", [])
    (tmp_path / "ds" / "train_db").mkdir(parents=True)
    (tmp_path / "ds" / "train_db" / "data.mdb").write_bytes(b"")
    (tmp_path / "plain").mkdir()
    cases = {str(tmp_path / "nope"): "database not found",
             str(empty): "holds no records",
             str(tmp_path / "plain"): "is not an LMDB database: no data.mdb in it",
             str(tmp_path / "ds"): f"give one of the databases it holds: {tmp_path / 'ds' / 'train_db'}",
             str(tmp_path / "ds" / "train_db"): "is empty",
             str(tmp_path / "ds" / "train_db" / "data.mdb"): "give the database folder"}
    for path, words in cases.items():
        code, out, err = run_mean(capsys, path)
        assert code == 2 and out == "" and err.count("\n") == 1 and words in err, (path, err)
    code, _, err = run_mean(capsys, str(empty), str(tmp_path / "no" / "m.binaryproto"))
    assert code == 2 and "folder not found for the output file" in err


@pytest.mark.quick
def test_a_database_etl_is_still_writing_is_not_read(caffe_pb2, caffe_db, tmp_path, capsys):
    from etl.outlock import exclusive

    (tmp_path / "ds").mkdir()
    caffe_db.rename(tmp_path / "ds" / "train_db")
    with exclusive(tmp_path / "ds"):  # as etl convert holds it
        code, _, err = run_mean(capsys, str(tmp_path / "ds" / "train_db"))
    assert code == 2 and "is being written by an etl run" in err and "take the mean when that run has ended" in err
    assert run_mean(capsys, str(tmp_path / "ds" / "train_db"))[0] == 0


@pytest.mark.quick
def test_a_worker_that_dies_is_an_error_not_a_hang(caffe_db, capsys, monkeypatch):
    real, sixth = dbmean.record_pixels, all_records(caffe_db)[5][1]

    def dies_on_the_sixth(value, tj):
        if value == sixth:
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        return real(value, tj)

    monkeypatch.setattr(dbmean, "record_pixels", dies_on_the_sixth)  # the forked workers inherit it
    monkeypatch.setattr(dbmean, "INPROCESS_BELOW", 0)
    monkeypatch.setattr(dbmean, "RANGE_LIMITS", (2, 2))
    code, out, err = run_mean(capsys, str(caffe_db), "--workers", "2")
    assert code == 1 and out == "" and err == ("etl: error: a worker process died while taking the mean (out of "
                                               "memory, or a decoder crash on a damaged record?)\n")


@pytest.mark.quick
def test_the_staged_sum_stays_exact_past_what_uint16_holds():
    rng = np.random.default_rng(RNG_SEED)
    images = [np.full((2, 3, 1), 255, np.uint8)] * 600 + [rng.integers(0, 256, (2, 3, 1), np.uint8) for _ in range(9)]
    pixel_sum = dbmean.PixelSum((2, 3, 1))
    for image in images:
        pixel_sum.add(image)
    np.testing.assert_array_equal(pixel_sum.flush(), np.sum(images, axis=0, dtype=np.uint64))


def test_the_benchmark_harness_runs_on_a_tiny_corpus(tmp_path, capsys):
    from benchmarks.mean_bench import main as bench

    args = ["--generate", "12", "--rounds", "1", "--workers", "2", "--out", str(tmp_path / "r.txt")]
    assert bench(args) == 0
    lines = (tmp_path / "r.txt").read_text().splitlines()
    assert lines[0] == "# python benchmarks/mean_bench.py " + " ".join(args)
    assert [line.split(" | ")[0] for line in lines[4:]] == ["| one process, cv2.imdecode + numpy sum",
                                                           "| etl mean --workers 1", "| etl mean --workers 2"]


@pytest.mark.quick
def test_an_imageset_database_etl_is_still_writing_is_not_read(caffe_db, capsys):
    from etl.outlock import exclusive

    (caffe_db / ".etl").mkdir()  # etl imageset's own files live in the database folder
    with exclusive(caffe_db):  # as etl imageset holds it
        code, _, err = run_mean(capsys, str(caffe_db))
    assert code == 2 and "is being written by an etl run" in err
    assert run_mean(capsys, str(caffe_db))[0] == 0
