"""`etl imageset`: convert_imageset's flags, keys and Datums, checked with the protobuf runtime on tests/caffe.proto."""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from etl.cli import main
from etl.imageset import imageset_settings, parse_gflags
from etl.memory import commit_records
from etl.messages import ChunkResult, Record
from etl.pipeline import convert
from etl.settings import UsageError
from etl.writer import SplitWriter, WriterSpec, _write_chunk

from .conftest import gradient, jpeg, run_cli
from .test_end_to_end import all_records

SIZES = [(40, 30), (33, 47), (64, 20), (25, 25), (50, 36)]


@pytest.fixture()
def images(tmp_path) -> tuple[Path, Path]:
    """ROOTFOLDER with colour JPEGs of several sizes (one with a space in its name), a gray one and a PNG,
    and Caffe's list of them."""
    root = tmp_path / "root"
    (root / "cls a").mkdir(parents=True)
    (root / "b").mkdir()
    lines = []
    for n, (w, h) in enumerate(SIZES):
        name = f"cls a/im {n}.JPEG" if n % 2 else f"b/im{n}.jpg"
        (root / name).write_bytes(jpeg(np.roll(gradient(w, h), n * 7, axis=1), quality=92))
        lines.append(f"{name} {n % 3}")
    (root / "b/gray.jpg").write_bytes(jpeg(gradient(30, 20)[:, :, 0], quality=90))
    Image.fromarray(gradient(21, 13)).save(root / "b/pic.png")
    lines += ["b/gray.jpg 1", "b/pic.png 2"]
    listed = tmp_path / "train.txt"
    listed.write_text("\n".join(lines) + "\n")
    return root, listed


def run(root: Path, listed: Path, db: Path, *flags: str) -> dict:
    """etl imageset in this process (its workers from a forkserver), as the command line would run it."""
    values, positional = parse_gflags([*flags, f"{root}/", str(listed), str(db)])
    return convert(imageset_settings({**values, "workers": 2}, positional), progress=False)


def datums(db: Path, caffe_pb2) -> list[tuple[str, object]]:
    out = []
    for key, value in all_records(db):
        d = caffe_pb2.Datum()
        d.ParseFromString(value)
        out.append((key.decode(), d))
    return out


def listed_pairs(listed: Path) -> list[tuple[str, int]]:
    return [(p, int(label)) for p, label in (line.rsplit(" ", 1) for line in listed.read_text().splitlines())]


@pytest.mark.quick
@pytest.mark.parametrize("argv, expected", [
    (["-shuffle", "--gray"], {"shuffle": True, "gray": True}),
    (["--shuffle=false", "--nogray"], {"shuffle": False, "gray": False}),
    (["--resize_width=256", "-resize_height", "128"], {"resize_width": 256, "resize_height": 128}),
    (["--encoded", "--encode_type=png", "--backend", "lmdb"], {"encoded": True, "encode_type": "png"}),
    (["-check_size=true", "--quality=80", "--seed=7"], {"check_size": True, "quality": 80, "seed": 7}),
])
def test_flags_as_gflags_spells_them(argv, expected):
    flags, positional = parse_gflags(["root/", *argv, "list.txt", "db"])
    assert {k: flags[k] for k in expected} == expected
    assert positional == ["root/", "list.txt", "db"]


@pytest.mark.quick
def test_bad_flags_and_arguments_stop_with_one_line(images, tmp_path, capsys):
    root, listed = images
    cases = [
        (["--resize_widht=3", str(root), str(listed), "db"],
         "unknown flag --resize_widht; did you mean --resize_width?"),
        (["--shuffle=maybe", str(root), str(listed), "db"], "--shuffle takes true or false"),
        (["--backend", "leveldb", str(root), str(listed), "db"], "--backend leveldb is not supported"),
        # etl convert's spelling, last: refused, never taken as DB_NAME (a folder named --resize-filter=antialias)
        ([str(root), str(listed), "db", "--resize-filter=antialias"],
         "unknown flag --resize-filter: its flags are spelt as Caffe's, with '_': --resize_filter"),
        (["--resize_filter=cubic", str(root), str(listed), str(tmp_path / "db")],
         "--resize_filter must be one of antialias, caffe, got 'cubic'"),
        (["--encoded", "--check_size", str(root), str(listed), "db"], "--check_size compares raw images"),
        ([str(root), str(listed)], "takes ROOTFOLDER/ LISTFILE DB_NAME, got 2 arguments"),
        ([str(tmp_path / "nope"), str(listed), "db"], "ROOTFOLDER not found"),
        ([str(root), str(root / "b/pic.png"), "db"], "does not start with a 'path label' line"),
    ]
    for argv, message in cases:
        assert main(["imageset", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main(["imageset", "--help"]) == 0
    assert "--resize_width" in capsys.readouterr().out


def test_raw_records_are_bgr_pixels_keyed_by_line_and_path(images, tmp_path, caffe_pb2):
    root, listed = images
    db = tmp_path / "db"
    run(root, listed, db)
    got = datums(db, caffe_pb2)
    pairs = listed_pairs(listed)
    assert [k for k, _ in got] == [f"{i:08d}_{p}" for i, (p, _) in enumerate(pairs)]
    for (key, d), (path, label) in zip(got, pairs, strict=True):
        bgr = cv2.imread(str(root / path), cv2.IMREAD_COLOR)  # OpenCV, as Caffe reads it
        assert (d.channels, d.height, d.width) == (3, *bgr.shape[:2]), key
        assert d.HasField("encoded") and not d.encoded and d.label == label
        pixels = np.frombuffer(d.data, np.uint8).reshape(3, *bgr.shape[:2]).transpose(1, 2, 0)
        assert np.abs(pixels.astype(int) - bgr).max() <= 1, key
    assert sorted(os.listdir(db)) == [".etl", "data.mdb", "lock.mdb"]  # no DIGITS side files
    assert not (tmp_path / "labels.txt").exists()


def test_encoded_without_resize_stores_the_files_own_bytes(images, tmp_path, caffe_pb2):
    root, listed = images
    db = tmp_path / "db"
    run(root, listed, db, "--encoded")
    for (key, d), (path, label) in zip(datums(db, caffe_pb2), listed_pairs(listed), strict=True):
        assert d.data == (root / path).read_bytes(), key
        assert d.encoded and d.label == label
        assert not d.HasField("channels") and not d.HasField("height") and not d.HasField("width")


def test_encoded_with_another_type_or_a_resize_is_encoded_again(images, tmp_path, caffe_pb2):
    root, listed = images
    as_png = tmp_path / "png"
    run(root, listed, as_png, "--encoded", "--encode_type=png")
    for (key, d), (path, _) in zip(datums(as_png, caffe_pb2), listed_pairs(listed), strict=True):
        im = Image.open(io.BytesIO(d.data))
        assert im.format == "PNG" and im.size == Image.open(root / path).size, key
        assert (d.data == (root / path).read_bytes()) == path.endswith(".png")  # a PNG passes through
    resized = tmp_path / "resized"
    run(root, listed, resized, "--encoded", "--resize_width=32", "--resize_height=24")
    for (key, d), (path, _) in zip(datums(resized, caffe_pb2), listed_pairs(listed), strict=True):
        im = Image.open(io.BytesIO(d.data))
        assert im.size == (32, 24) and im.format == ("PNG" if path.endswith(".png") else "JPEG"), key


def test_gray_stores_one_channel_and_passes_only_gray_files_through(images, tmp_path, caffe_pb2):
    root, listed = images
    raw = tmp_path / "raw"
    run(root, listed, raw, "--gray", "--resize_width=16", "--resize_height=8")
    assert all((d.channels, d.height, d.width, len(d.data)) == (1, 8, 16, 128) for _, d in datums(raw, caffe_pb2))
    enc = tmp_path / "enc"
    run(root, listed, enc, "--gray", "--encoded")
    for (key, d), (path, _) in zip(datums(enc, caffe_pb2), listed_pairs(listed), strict=True):
        assert Image.open(io.BytesIO(d.data)).mode == "L", key
        assert (d.data == (root / path).read_bytes()) == (path == "b/gray.jpg"), key


def test_a_skipped_image_leaves_its_key_index_unused(images, tmp_path, caffe_pb2):
    root, listed = images
    (root / "b/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    lines = listed.read_text().splitlines()
    lines.insert(2, "b/broken.jpg 0")
    lines.insert(4, "b/missing.jpg 1")
    listed.write_text("\n".join(lines) + "\n")
    report = run(root, listed, tmp_path / "db")
    assert report["splits"]["train"]["skipped"] == 2
    keys = [k for k, _ in datums(tmp_path / "db", caffe_pb2)]
    assert [int(k[:8]) for k in keys] == [i for i in range(len(lines)) if i not in (2, 4)]


def test_shuffle_is_seeded_and_keys_follow_the_shuffled_order(images, tmp_path, caffe_pb2):
    root, listed = images
    orders = []
    for name, seed in (("a", "1385"), ("b", "1385"), ("c", "7")):
        run(root, listed, tmp_path / name, "--shuffle", f"--seed={seed}", "--encoded")
        orders.append([k for k, _ in datums(tmp_path / name, caffe_pb2)])
    assert orders[0] == orders[1] != orders[2]
    assert [int(k[:8]) for k in orders[0]] == list(range(len(orders[0])))
    paths = [k[9:] for k in orders[0]]
    assert sorted(paths) == sorted(p for p, _ in listed_pairs(listed)) and paths != [p for p, _ in listed_pairs(listed)]


def test_check_size_stops_at_an_image_of_another_size(images, tmp_path):
    root, listed = images
    with pytest.raises(Exception, match=r"--check_size: .* is 3x47x33 .*the first image written is 3x30x40"):
        run(root, listed, tmp_path / "odd", "--check_size")
    run(root, listed, tmp_path / "even", "--check_size", "--resize_width=8", "--resize_height=8")


def test_commits_every_1000_records_and_refuses_an_existing_database(images, tmp_path):
    root, listed = images
    for flags in (["--encoded"], ["--resize_width=256", "--resize_height=256"]):
        values, positional = parse_gflags([*flags, str(root), str(listed), str(tmp_path / "db")])
        settings = imageset_settings(values, positional)
        assert commit_records(settings) == 1000 and 1000 % settings.chunk_size == 0, flags  # commits at 1000
    run(root, listed, tmp_path / "db")
    with pytest.raises(UsageError, match="already holds a dataset"):
        run(root, listed, tmp_path / "db")


def test_the_command_line_end_to_end(images, tmp_path):
    root, listed = images
    db = tmp_path / "db"
    done = run_cli("imageset", "-encoded", f"{root}/", str(listed), str(db), "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "etl imageset:" in done.stdout and str(db / ".etl" / "report.json") in done.stdout
    assert len(all_records(db)) == len(listed_pairs(listed))
    mean = run_cli("mean", str(db))
    assert mean.returncode == 2 and "same size" in mean.stderr  # no resize: the sizes differ, as in Caffe


def test_blank_lines_keep_their_number_as_in_convert_imageset(images, tmp_path, caffe_pb2):
    root, listed = images
    lines = listed.read_text().splitlines()
    listed.write_text("\n".join([lines[0], "", *lines[1:3]]) + "\n")
    report = run(root, listed, tmp_path / "db", "--encoded")
    keys = [k for k, _ in datums(tmp_path / "db", caffe_pb2)]
    assert [int(k[:8]) for k in keys] == [0, 2, 3]
    assert "blank line" in report["splits"]["train"]["skipped_files"][0]["reason"]


def test_encode_type_alone_means_encoded_and_a_name_without_extension_is_png(images, tmp_path, caffe_pb2):
    root, listed = images
    (root / "b/noext").write_bytes((root / "b/im0.jpg").read_bytes())
    listed.write_text(listed.read_text() + "b/noext 1\n")
    run(root, listed, tmp_path / "png", "--encode_type=png", "--resize_width=8", "--resize_height=8")
    assert all(d.encoded and d.data.startswith(b"\x89PNG") for _, d in datums(tmp_path / "png", caffe_pb2))
    run(root, listed, tmp_path / "own", "--encoded")
    last = datums(tmp_path / "own", caffe_pb2)[-1][1]
    assert last.encoded and last.data.startswith(b"\x89PNG")


def test_a_cut_png_is_skipped_not_passed_through(images, tmp_path):
    root, listed = images
    whole = (root / "b/pic.png").read_bytes()
    (root / "b/pic.png").write_bytes(whole[: len(whole) // 2])
    report = run(root, listed, tmp_path / "db", "--encoded")
    assert [f["path"] for f in report["splits"]["train"]["skipped_files"]] == ["b/pic.png"]


def test_check_size_holds_across_a_resume(images, tmp_path):
    root, listed = images
    small = root / "b/small.jpg"
    small.write_bytes(jpeg(gradient(12, 10)))
    listed.write_text("".join("b/small.jpg 0\n" for _ in range(8)) + "b/im0.jpg 1\n")
    values, positional = parse_gflags(["--check_size", str(root), str(listed), str(tmp_path / "db")])
    settings = replace(imageset_settings({**values, "workers": 1}, positional), chunk_size=4, commit_every=4)
    with pytest.raises(Exception, match="--check_size"):
        convert(settings, progress=False)
    assert len(all_records(tmp_path / "db")) == 8
    with pytest.raises(Exception, match="--check_size"):
        convert(replace(settings, resume=True), progress=False)


def test_the_writer_also_commits_by_bytes(tmp_path):
    """Raw records of unresized photos are far larger than the budget assumes: the batch awaiting a commit is
    bounded by --max_buffer_mb's bytes too, not only by the record count."""
    (tmp_path / ".etl").mkdir()
    spec = WriterSpec("train", str(tmp_path), "", commit_every=1000, resume=False, mean=None, commit_bytes=1000)
    writer = SplitWriter(spec)
    writer.open()
    sent: list = []
    for chunk in range(3):
        record = Record(chunk, 0, f"{chunk}.jpg", b"x" * 600)
        _write_chunk(writer, ChunkResult(chunk, [record]), SimpleNamespace(send=sent.append))
    assert writer.summary.commits == 1 and writer.db.pending == 1  # 1,200 bytes: committed; then 600 wait
    writer.close(complete=True)


def test_paths_too_long_for_a_key_and_half_a_resize_are_refused(images, tmp_path, capsys):
    root, listed = images
    listed.write_text(listed.read_text() + "b/" + "x" * 600 + ".jpg 1\n")
    assert main(["imageset", str(root), str(listed), str(tmp_path / "db")]) == 2
    assert "line 8: the path is 606 bytes long" in capsys.readouterr().err
    assert main(["imageset", "--resize_width=10", str(root), str(listed), str(tmp_path / "db")]) == 2
    assert "give both --resize_width and --resize_height" in capsys.readouterr().err
    assert main(["imageset", "--resize_width=99999", "--resize_height=9", str(root), str(listed), "db"]) == 2
    assert "--resize_width must be" in capsys.readouterr().err


def test_huge_label_numbers_need_no_labels_list(images, tmp_path):
    root, listed = images
    listed.write_text("b/im0.jpg 0\nb/im2.jpg 20000000\n")
    report = run(root, listed, tmp_path / "db", "--encoded")
    assert report["splits"]["train"]["per_class"] == {"0": 1, "20000000": 1}


def test_a_run_that_writes_nothing_exits_1_as_convert_does(images, tmp_path):
    root, listed = images
    wrong = tmp_path / "elsewhere"  # a ROOTFOLDER that exists but holds none of the listed files
    wrong.mkdir()
    proc = run_cli("imageset", f"{wrong}/", str(listed), str(tmp_path / "db"), "--workers", "1", "--quiet")
    assert proc.returncode == 1 and "no image could be converted" in proc.stderr
    assert str(tmp_path / "db" / ".etl" / "report.json") in proc.stderr  # where the reasons are


@pytest.mark.quick
def test_the_lmdb_is_never_written_into_the_image_folder(images, tmp_path):
    root, listed = images
    proc = run_cli("imageset", str(root), str(listed), f"{root}/", "--quiet")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is ROOTFOLDER" in proc.stderr
    assert not (root / "data.mdb").exists() and not (root / ".etl").exists()


def test_encoded_keeps_a_jpeg_whose_icc_profile_holds_sos_bytes(images, tmp_path, caffe_pb2):
    """An ICC profile (APP2) holding the bytes FF DA is not a JPEG cut after its header: stored as it is."""
    from .test_codec import sos_in_payload, with_segment

    root, listed = images
    icc = with_segment(jpeg(gradient(32, 24), quality=90), 0xE2, sos_in_payload())
    (root / "b/icc.jpg").write_bytes(icc)
    listed.write_text(listed.read_text() + "b/icc.jpg 0\n")
    db = tmp_path / "db"
    report = run(root, listed, db, "--encoded")
    stored = dict(datums(db, caffe_pb2))
    assert stored[f"{len(SIZES) + 2:08d}_b/icc.jpg"].data == icc
    assert report["splits"]["train"]["skipped"] == 0


# Sizes that shrink by more than 2x (where Caffe's bilinear skips pixels), less, and grow; odd and even.
CAFFE_SIZES = [(500, 375), (333, 500), (97, 61), (640, 200), (20, 15), (129, 257)]


@pytest.fixture()
def photos(tmp_path) -> tuple[Path, Path]:
    """Photo-like JPEGs (4:2:0, 4:2:2 and 4:4:4), a gray JPEG and an RGB PNG, and their list."""
    from etl.synth import photo_like

    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(11)
    names = []
    for n, (w, h) in enumerate(CAFFE_SIZES):
        names.append(f"p{n}.jpg")
        (root / names[-1]).write_bytes(jpeg(photo_like(rng, w, h), quality=90, subsampling=n % 3))
    (root / "gray.jpg").write_bytes(jpeg(photo_like(rng, 90, 70)[:, :, 1], quality=90))
    Image.fromarray(photo_like(rng, 70, 90)).save(root / "pic.png")
    listed = tmp_path / "photos.txt"
    listed.write_text("".join(f"{name} {i % 2}\n" for i, name in enumerate([*names, "gray.jpg", "pic.png"])))
    return root, listed


def opencv_caffe(path: Path, width: int, height: int, flag: int) -> np.ndarray:
    """convert_imageset's pixels, by opencv-python itself: cv::imread, then cv::resize(INTER_LINEAR)."""
    img = cv2.imread(str(path), flag)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def test_resized_raw_records_are_opencvs_own_pixels(photos, tmp_path, caffe_pb2):
    """The default resize is Caffe's: every raw Datum is cv2.imread + cv2.resize(INTER_LINEAR), CHW BGR, byte
    for byte (the old antialiased squash differed on every image that shrinks)."""
    root, listed = photos
    db = tmp_path / "db"
    report = run(root, listed, db, "--resize_width=64", "--resize_height=48")
    got = datums(db, caffe_pb2)
    assert len(got) == len(listed_pairs(listed)) and report["settings"]["resize_filter"] == "caffe"
    for (key, d), (path, _) in zip(got, listed_pairs(listed), strict=True):
        want = opencv_caffe(root / path, 64, 48, cv2.IMREAD_COLOR).transpose(2, 0, 1)
        assert (d.channels, d.height, d.width) == (3, 48, 64) and d.data == want.tobytes(), key


def test_gray_resized_records_are_opencvs_grayscale_pixels(photos, tmp_path, caffe_pb2):
    """--gray: IMREAD_GRAYSCALE, libjpeg's own gray conversion for a colour JPEG, byte for byte. A colour
    PNG's gray is Pillow's, one level off OpenCV's on some pixels (a stated difference, docs/caffe.md)."""
    root, listed = photos
    db = tmp_path / "db"
    run(root, listed, db, "--gray", "--resize_width=40", "--resize_height=30")
    for (key, d), (path, _) in zip(datums(db, caffe_pb2), listed_pairs(listed), strict=True):
        want = opencv_caffe(root / path, 40, 30, cv2.IMREAD_GRAYSCALE)
        got = np.frombuffer(d.data, np.uint8).reshape(30, 40)
        if path.endswith(".png"):
            assert np.abs(got.astype(int) - want).max() <= 1, key
        else:
            assert d.data == want.tobytes(), key


def test_resized_encoded_records_are_opencvs_imencode(photos, tmp_path, caffe_pb2):
    """--encoded with a resize: the JPEG cv::imencode writes at its defaults (quality 95), byte for byte."""
    root, listed = photos
    db = tmp_path / "db"
    run(root, listed, db, "--encoded", "--encode_type=jpg", "--resize_width=50", "--resize_height=50")
    for (key, d), (path, _) in zip(datums(db, caffe_pb2), listed_pairs(listed), strict=True):
        ok, want = cv2.imencode(".jpg", opencv_caffe(root / path, 50, 50, cv2.IMREAD_COLOR))
        assert ok and d.encoded and d.data == want.tobytes(), key


def test_the_antialias_filter_is_etl_converts_squash(photos, tmp_path, caffe_pb2, capsys):
    """--resize_filter=antialias stores what etl convert's squash makes (less aliasing, not Caffe's pixels);
    the filter is part of the resume identity, named in Caffe's flag spelling."""
    from turbojpeg import TurboJPEG

    from etl.transform import dct_scale, plan_geometry, resize

    root, listed = photos
    db = tmp_path / "db"
    report = run(root, listed, db, "--resize_filter=antialias", "--resize_width=64", "--resize_height=48")
    assert report["settings"]["resize_filter"] == "antialias"
    path, d = root / "p0.jpg", datums(db, caffe_pb2)[0][1]
    scale = dct_scale(500, 375, plan_geometry(500, 375, 64, 48, "squash"))
    assert scale == 4  # the antialias filter decodes at a DCT scale (libjpeg's own, through PyTurboJPEG here)
    small_bgr = TurboJPEG().decode(path.read_bytes(), scaling_factor=(1, scale))
    assert d.data == np.ascontiguousarray(resize(small_bgr, 64, 48).transpose(2, 0, 1)).tobytes()
    assert d.data != opencv_caffe(path, 64, 48, cv2.IMREAD_COLOR).transpose(2, 0, 1).tobytes()
    assert main(["imageset", "--resume", "--quiet", "--resize_width=64", "--resize_height=48", f"{root}/",
                 str(listed), str(db)]) == 2
    assert "--resize_filter was 'antialias', now 'caffe'" in capsys.readouterr().err
