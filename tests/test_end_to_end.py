"""A generated tree through `etl convert`, read back by independent decoders and by etl.reader."""

import io
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
from PIL import Image

from etl.reader import LmdbDataset
from etl.synth import photo_like, ycck_jpeg
from etl.transform import apply_geometry, plan_geometry

from .conftest import run_cli


def all_records(db: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        pairs = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    env.close()
    return pairs


def on_white(im: Image.Image) -> Image.Image:
    """Pillow's own view of the image, transparency composited on white as the contract says."""
    if im.mode in ("RGBA", "LA", "P"):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return im.convert("RGB")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def converted(small_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "ds"
    proc = run_cli("convert", str(small_tree / "train"), str(out), "--val-dir", str(small_tree / "val"),
                   "--workers", "2", "--chunk-size", "5")
    assert proc.returncode == 0, proc.stderr
    return small_tree, out, proc


def test_layout_and_labels(converted):
    tree, out, proc = converted
    for name in ("labels.txt", "train.txt", "val.txt", "mean.binaryproto", "mean.jpg", "report.json",
                 "train_db/data.mdb", "train_db/lock.mdb", "val_db/data.mdb"):
        assert (out / name).exists(), name
    labels = (out / "labels.txt").read_text().splitlines()
    assert labels == sorted(p.name for p in (tree / "train").iterdir())
    assert "etl convert: 3 classes" in proc.stdout and "report:" in proc.stdout


def test_report_has_per_stage_cpu_times(converted):
    _, out, _ = converted
    train = json.loads((out / "report.json").read_text())["splits"]["train"]
    stages = train["worker_stage_cpu_seconds"]
    assert set(stages) == {"read", "decode", "resize", "encode", "datum"}
    assert stages["decode"] > 0 and stages["encode"] > 0 and stages["resize"] > 0
    assert sum(stages.values()) <= train["worker_cpu_seconds"] + 0.01  # parts of the workers' CPU time


def test_every_record_read_by_protobuf_pillow_and_opencv(converted, caffe_pb2):
    tree, out, _ = converted
    labels = (out / "labels.txt").read_text().splitlines()
    for split in ("train", "val"):
        lines = (out / f"{split}.txt").read_text(encoding="utf-8").splitlines()
        pairs = all_records(out / f"{split}_db")
        sources = list((tree / split).rglob("*.*"))
        assert len(pairs) == len(lines) == len(sources)  # the awkward kinds are all valid images
        for i, ((key, value), line) in enumerate(zip(pairs, lines, strict=True)):
            datum = caffe_pb2.Datum()
            datum.ParseFromString(value)
            path, label = line.rsplit(" ", 1)
            assert key == b"%08d_%d" % (i, datum.label)
            assert datum.label == int(label) and Path(path).relative_to(tree / split).parts[0] == labels[datum.label]
            assert (datum.channels, datum.height, datum.width, datum.encoded) == (3, 224, 224, True)
            pil = np.asarray(Image.open(io.BytesIO(datum.data)).convert("RGB"))
            ocv = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            assert pil.shape == ocv.shape == (224, 224, 3)
            reference = np.asarray(on_white(Image.open(path)).resize((224, 224), Image.LANCZOS))
            assert psnr(pil, reference) > 24, path  # the right picture, in RGB order, under this key


def test_mean_is_valid_blobproto_and_matches_records(converted, caffe_pb2):
    _, out, _ = converted
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString((out / "mean.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 224, 224)
    mean_bgr = np.array(blob.data, np.float32).reshape(3, 224, 224)
    assert (mean_bgr == np.round(mean_bgr)).all()  # whole pixel values, as DIGITS stores them
    decoded = np.mean([np.asarray(img, np.float64) for img, _ in LmdbDataset(out / "train_db")], axis=0)
    # records are JPEG q90 of the pixels that were averaged: close, not equal
    assert np.abs(mean_bgr[::-1].transpose(1, 2, 0) - decoded).mean() < 2.0
    jpg = np.asarray(Image.open(out / "mean.jpg"))
    assert jpg.shape == (224, 224, 3) and np.abs(jpg.astype(float) - decoded).mean() < 3.0


def test_reader_random_access_and_pickling(converted):
    _, out, _ = converted
    ds = LmdbDataset(out / "train_db")
    items = list(ds)
    assert len(ds) == len(items)
    img, label = ds[3]
    np.testing.assert_array_equal(img, items[3][0])
    assert label == items[3][1] and ds[-1][1] == items[-1][1]
    with pytest.raises(IndexError):
        ds[len(ds)]
    clone = pickle.loads(pickle.dumps(ds))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        labels = list(pool.map(_label_of, [clone] * 4, range(4)))  # a spawn DataLoader's workers
    assert labels == [items[i][1] for i in range(4)]
    read, write = os.pipe()
    pid = os.fork()  # a fork DataLoader's workers use the parent's object, environment already open
    if pid == 0:
        os.write(write, b"%d" % ds[5][1])
        os._exit(0)
    os.waitpid(pid, 0)
    assert int(os.read(read, 16)) == items[5][1]
    ds.close()


def _label_of(ds: LmdbDataset, i: int) -> int:
    return ds[i][1]


def test_verify_passes(converted):
    _, out, _ = converted
    proc = run_cli("verify", str(out))
    assert proc.returncode == 0 and "etl verify: OK" in proc.stdout, proc.stdout + proc.stderr


def test_worker_count_and_queue_depth_do_not_change_a_byte(small_tree, tmp_path):
    outs = []
    for workers, depth in (("1", "1"), ("3", "4")):
        out = tmp_path / f"w{workers}"
        proc = run_cli("convert", str(small_tree / "train"), str(out), "--val-pct", "20", "--workers", workers,
                       "--queue-depth", depth, "--chunk-size", "3", "--resize-mode", "fill", "--quiet")
        assert proc.returncode == 0, proc.stderr
        outs.append(out)
    a, b = outs
    for split in ("train_db", "val_db"):
        assert all_records(a / split) == all_records(b / split)
    for name in ("train.txt", "val.txt", "labels.txt", "mean.binaryproto", "mean.jpg"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize(("encoding", "channels", "mode"), [("none", 3, "crop"), ("png", 1, "half_crop"),
                                                            ("jpg", 1, "squash")])
def test_encodings_channels_and_modes_end_to_end(small_tree, tmp_path, caffe_pb2, encoding, channels, mode):
    out = tmp_path / "o"
    proc = run_cli("convert", str(small_tree / "val"), str(out), "--val-pct", "0", "--encoding", encoding,
                   "--channels", str(channels), "--resize-mode", mode, "--width", "96", "--height", "64", "--quiet")
    assert proc.returncode == 0, proc.stderr
    key, value = all_records(out / "train_db")[0]
    ds = LmdbDataset(out / "train_db")
    assert all(img.shape == (64, 96, channels) for img, _ in ds) and len(ds) == 9
    datum = caffe_pb2.Datum()
    datum.ParseFromString(value)
    assert (datum.channels, datum.height, datum.width) == (channels, 64, 96)
    assert datum.HasField("encoded") is (encoding != "none")
    if encoding == "none":  # raw records are CHW BGR: reversing the planes gives the reader's RGB
        chw = np.frombuffer(datum.data, np.uint8).reshape(3, 64, 96)
        np.testing.assert_array_equal(chw[::-1].transpose(1, 2, 0), ds[0][0])
    if encoding == "png":
        assert datum.data[:4] == b"\x89PNG"
    assert run_cli("verify", str(out), "--quiet").returncode == 0


def test_verify_fails_on_a_damaged_database(small_tree, tmp_path):
    out = tmp_path / "o"
    assert run_cli("convert", str(small_tree / "val"), str(out), "--val-pct", "0", "--quiet").returncode == 0
    env = lmdb.open(str(out / "train_db"))
    with env.begin(write=True) as txn:
        key = next(iter(txn.cursor()))[0]
        txn.put(key, b"\x08\x03\x10\xe0\x01\x18\xe0\x01\x22\x04abcd\x28\x00\x38\x01")  # not a JPEG
        last = list(txn.cursor().iternext(values=False))[-1]
        txn.delete(last)
    env.close()
    proc = run_cli("verify", str(out), "--quiet")
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout and "does not decode" in proc.stdout and "report.json says" in proc.stdout


def test_existing_dataset_is_not_overwritten(small_tree, tmp_path):
    out = tmp_path / "o"
    args = [str(small_tree / "val"), str(out), "--val-pct", "0", "--quiet"]
    assert run_cli("convert", *args).returncode == 0
    before = (out / "train.txt").read_bytes()
    proc = run_cli("convert", *args, "--width", "32")
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (out / "train.txt").read_bytes() == before
    assert run_cli("convert", *args, "--width", "32", "--overwrite").returncode == 0


@pytest.mark.quick
def test_console_script_and_module_are_the_same_cli():
    proc = subprocess.run([sys.executable, "-m", "etl", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "convert" in proc.stdout and "verify" in proc.stdout


def test_convert_after_the_caller_used_opencv_threads(small_tree, tmp_path):
    """A program that ran OpenCV (with its thread pool) before convert() must not deadlock its workers."""
    code = (
        "import cv2, numpy as np; cv2.setNumThreads(4); "
        "cv2.GaussianBlur(np.zeros((2000, 2000, 3), np.uint8), (0, 0), 3); "
        "from etl.settings import Settings; from etl.pipeline import convert; "
        f"r = convert(Settings(train_dir={str(small_tree / 'val')!r}, out_dir={str(tmp_path / 'o')!r}, "
        "val_pct=0.0, workers=2), progress=False); print(r['splits']['train']['written'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "9"


def test_sizes_that_run_opencvs_thread_pool_for_the_mean_do_not_hang_the_val_split(small_tree, tmp_path):
    """`etl convert` forks its workers: the coordinator makes the mean image (OpenCV) only after the last split,
    since at 256x256 and up the resize starts OpenCV's threads, and workers forked after that deadlock."""
    proc = subprocess.run([sys.executable, "-m", "etl", "convert", str(small_tree / "train"), str(tmp_path / "o"),
                           "--width", "256", "--height", "256", "--val-pct", "25", "--workers", "2", "--quiet"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["splits"]["val"]["written"] > 0 and (tmp_path / "o" / "mean.jpg").exists()


def test_a_mean_file_that_cannot_be_written_is_one_line_and_resume_writes_it(small_tree, tmp_path):
    args = ("convert", str(small_tree / "val"), str(tmp_path / "o"), "--val-pct", "0", "--workers", "1", "--quiet")
    assert run_cli(*args).returncode == 0
    proto = tmp_path / "o" / "mean.binaryproto"
    good = proto.read_bytes()
    proto.unlink()
    proto.mkdir()  # something in the way of the mean file
    proc = run_cli(*args, "--resume")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("etl: error: writing the mean files failed (IsADirectoryError")
    assert proc.stderr.strip().endswith("run the same command with --resume")
    proto.rmdir()
    assert run_cli(*args, "--resume").returncode == 0
    assert proto.read_bytes() == good


def test_val_pct_too_small_for_any_val_image_is_said_in_summary_and_report(tmp_path):
    # As --val says "N classes have no val images": a note, not a stop (every image is in train), also under
    # --on-error fail, which stops at what etl leaves out.
    from etl.synth import TreeSpec, make_tree

    make_tree(tmp_path / "train", TreeSpec(classes=2, per_class=3, seed=1, awkward=False))
    proc = run_cli("convert", str(tmp_path / "train"), str(tmp_path / "out"), "--val-pct", "10", "--workers", "1",
                   "--on-error", "fail")
    assert proc.returncode == 0, proc.stderr
    note = "2 classes have no val images: --val-pct 10 of so few images rounds to none"
    assert f"note: {note}" in proc.stdout and "no val_db is written" in proc.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any(n.startswith(note) for n in report["notes"])
    assert report["splits"]["train"]["written"] == 6 and not (tmp_path / "out" / "val_db").exists()


def quirks_tree(root: Path) -> dict[str, str]:
    """ILSVRC2012's own odd files, each in a train class folder: Adobe CMYK and YCCK JPEGs, a PNG with alpha
    named .JPEG (as n02105855_2933), a palette PNG with a transparent entry, a grey JPEG, a plain JPEG; a CMYK
    JPEG in val (as ILSVRC2012_val_00019877). Returns the colour conversion each train file needs, by name."""
    rng = np.random.default_rng(11)
    base = [photo_like(rng, w, h) for w, h in ((120, 90), (90, 120), (100, 100), (150, 80), (80, 60), (64, 64))]
    rgba = Image.fromarray(base[2]).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 100).astype(np.uint8), (100, 1))))
    palette = Image.fromarray(base[3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    files = {
        "train/a/n01_cmyk.JPEG": (pil_bytes(Image.fromarray(base[0]).convert("CMYK"), "JPEG", quality=90),
                                  "CMYK JPEG"),
        "train/a/n01_ycck.JPEG": (ycck_jpeg(base[1], quality=90), "YCCK JPEG"),
        "train/a/n01_plain.JPEG": (pil_bytes(Image.fromarray(base[5]), "JPEG", quality=90), None),
        "train/b/n02105855_2933.JPEG": (pil_bytes(rgba, "PNG"), "transparent PNG"),
        "train/b/n02_palette.png": (pil_bytes(palette, "PNG", transparency=0), "transparent PNG"),
        "train/b/n02_grey.JPEG": (pil_bytes(Image.fromarray(base[4]).convert("L"), "JPEG", quality=90), None),
        "val/a/ILSVRC2012_val_00019877.JPEG": (pil_bytes(Image.fromarray(base[0]).convert("CMYK"), "JPEG"),
                                               "CMYK JPEG"),
        "val/b/ILSVRC2012_val_00000001.JPEG": (pil_bytes(Image.fromarray(base[5]), "JPEG", quality=90), None),
    }
    for name, (data, _) in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return {name: kind for name, (_, kind) in files.items() if name.startswith("train/")}


def pil_bytes(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


@pytest.fixture(scope="module")
def quirks(tmp_path_factory):
    root = tmp_path_factory.mktemp("quirks")
    assert sum(kind is not None for kind in quirks_tree(root).values()) == 4  # the note below counts these
    out = root / "ds"
    proc = run_cli("convert", str(root / "train"), str(out), "--val-dir", str(root / "val"), "--width", "64",
                   "--height", "48", "--encoding", "png", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    return root, out, proc


def test_corpus_quirks_convert_to_pillows_colours(quirks):
    """Each record against Pillow's own RGB of the source (transparency composited on white) resized with etl's
    kernel: PNG records, so nothing lossy stands between them, and they are identical."""
    root, out, _ = quirks
    for split in ("train", "val"):
        lines = (out / f"{split}.txt").read_text().splitlines()
        ds = LmdbDataset(out / f"{split}_db")
        assert len(ds) == len(lines) == len(list((root / split).rglob("*.*")))
        for (stored, _), line in zip(ds, lines, strict=True):
            source = np.asarray(on_white(Image.open(line.rsplit(" ", 1)[0])))
            h, w = source.shape[:2]
            reference = apply_geometry(source, plan_geometry(w, h, 64, 48, "squash"), 64, 48, None)
            np.testing.assert_array_equal(stored, reference, err_msg=line)


def test_colour_conversions_are_counted_in_a_note(quirks):
    root, out, proc = quirks
    train = ("train: 4 images converted to RGB: 2 transparent PNGs, 1 CMYK JPEG, 1 YCCK JPEG "
             "(transparency composited onto white)")
    val = "val: 1 image converted to RGB: 1 CMYK JPEG"
    report = json.loads((out / "report.json").read_text())
    assert train in report["notes"] and val in report["notes"]
    assert f"note: {train}" in proc.stdout and f"note: {val}" in proc.stdout
    assert report["splits"]["train"]["colour_converted"] == {"CMYK JPEG": 1, "YCCK JPEG": 1, "transparent PNG": 2}


def test_colour_conversion_count_survives_a_resume(tmp_path):
    """The count covers the images a first run wrote, not only those of the run that resumed it."""
    (tmp_path / "train/a").mkdir(parents=True)
    (tmp_path / "train/b").mkdir(parents=True)
    cmyk = Image.fromarray(photo_like(np.random.default_rng(12), 40, 30)).convert("CMYK")
    (tmp_path / "train/a/cmyk.JPEG").write_bytes(pil_bytes(cmyk, "JPEG"))
    (tmp_path / "train/b/later.JPEG").write_bytes(b"not yet an image")
    args = ["convert", str(tmp_path / "train"), str(tmp_path / "ds"), "--width", "32", "--height", "24",
            "--no-shuffle", "--chunk-size", "1", "--on-error", "fail", "--workers", "1"]
    assert run_cli(*args).returncode != 0  # stops at later.JPEG, the CMYK image's chunk committed
    (tmp_path / "train/b/later.JPEG").write_bytes(pil_bytes(cmyk.convert("RGB"), "JPEG"))
    proc = run_cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "resumed: 1 record was already written" in proc.stdout
    assert "note: train: 1 image converted to RGB: 1 CMYK JPEG" in proc.stdout
