"""`etl verify DB`: one database, as `etl imageset` writes it (keys, labels, checksums, encoding and size checked
against its .etl/ files) or as Caffe writes it (each record a Datum whose image decodes)."""

from __future__ import annotations

from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest

from etl.datum import encode_caffe_datum

from .conftest import gradient, run_cli
from .test_end_to_end import all_records
from .test_imageset import images, run  # noqa: F401  (the fixture)
from .test_verify import damage_on_disk


def verify(db: Path) -> tuple[int, str]:
    proc = run_cli("verify", str(db), "--quiet")
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("flags", [("--encoded",), ("--resize_width=24", "--resize_height=20"),
                                   ("--resize_width=16", "--resize_height=16", "--gray", "--encoded"),
                                   ("--check_size", "--resize_width=24", "--resize_height=20")])
def test_an_imageset_database_verifies(images, tmp_path, flags):  # noqa: F811
    root, listed = images
    db = tmp_path / "db"
    run(root, listed, db, *flags)
    code, out = verify(db)
    assert code == 0 and out.startswith(f"etl verify: OK, {len(all_records(db))} records checked"), out
    assert "note:" not in out


@pytest.fixture()
def imageset_db(images, tmp_path) -> Path:  # noqa: F811
    root, listed = images
    db = tmp_path / "db"
    run(root, listed, db, "--resize_width=24", "--resize_height=20", "--check_size")
    return db


def replace_record(db: Path, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()


def test_changed_record_bytes_are_found(imageset_db):
    key = damage_on_disk(imageset_db, 2, 0.6)
    code, out = verify(imageset_db)
    assert code == 1 and f"record 2 ({key.decode()}): its bytes changed since it was written" in out
    assert ", .etl/train_db.sums says" in out


def test_labels_and_paths_are_checked_against_the_written_list(imageset_db):
    written = imageset_db / ".etl" / "train.txt"
    lines = written.read_text().splitlines()
    path, label = lines[1].rsplit(" ", 1)
    lines[1] = f"{path} {int(label) + 5}"
    lines[3] = "elsewhere/x.jpg " + lines[3].rsplit(" ", 1)[1]
    written.write_text("\n".join(lines) + "\n")
    code, out = verify(imageset_db)
    assert code == 1
    assert "record 1 (" in out and f"label {label}, .etl/train.txt has label {int(label) + 5}" in out
    assert "record 3 (" in out and ".etl/train.txt lists 'elsewhere/x.jpg'" in out


def test_a_record_of_another_size_is_found(imageset_db):
    key, _ = all_records(imageset_db)[1]
    other = np.ascontiguousarray(gradient(10, 8).transpose(2, 0, 1)).tobytes()
    replace_record(imageset_db, key, encode_caffe_datum(other, 0, (3, 8, 10)))
    code, out = verify(imageset_db)
    assert code == 1 and "8x10, resized to 20x24 expected" in out
    assert "8x10, the first record is 20x24 (--check_size)" in out
    assert "bytes changed" in out  # the checksum sees it too


def test_missing_etl_files_are_said_and_a_broken_report_is_one_line(imageset_db):
    (imageset_db / ".etl" / "train.txt").unlink()
    (imageset_db / ".etl" / "train_db.sums").unlink()
    code, out = verify(imageset_db)
    assert code == 0
    assert "note: no .etl/train.txt: paths and labels not checked" in out
    assert "note: no .etl/train_db.sums: record bytes not checked" in out
    (imageset_db / ".etl" / "report.json").write_text('{"settings": null}')
    code, out = verify(imageset_db)
    assert code == 1 and "cannot read" in out and "not a report etl imageset wrote" in out


def test_keys_must_be_caffes_and_paths_must_match_whole(imageset_db):
    records = all_records(imageset_db)
    env = lmdb.open(str(imageset_db))
    with env.begin(write=True) as txn:
        txn.delete(records[0][0])
        txn.put(b"00000000", records[0][1])  # no '_PATH'
    env.close()
    written = imageset_db / ".etl" / "train.txt"
    lines = written.read_text().splitlines()
    path, label = lines[2].rsplit(" ", 1)
    head, tail = path.rsplit("/", 1)
    lines[2] = f"{head}x/{tail} {label}"  # the same end, another folder
    written.write_text("\n".join(lines) + "\n")
    code, out = verify(imageset_db)
    assert code == 1
    assert "record 0 (00000000): not '%08d_PATH'" in out
    assert "record 2 (" in out and f"lists '{head}x/{tail}'" in out


def test_a_path_may_hold_any_line_break_but_newline(images, tmp_path):  # noqa: F811
    root, listed = images
    odd = "b/a\u2028b\x0cc.jpg"
    (root / odd).write_bytes((root / "b/im0.jpg").read_bytes())
    listed.write_text(f"{odd} 1\n" + listed.read_text())
    db = tmp_path / "db"
    run(root, listed, db)
    code, out = verify(db)
    assert code == 0 and out.startswith(f"etl verify: OK, {len(all_records(db))} records checked"), out


def test_a_digits_database_beside_its_labels_is_checked_as_one_database(tmp_path, caffe_pb2):
    """DIGITS writes labels.txt beside train_db but no report.json: not an etl dataset, so the database alone."""
    ds = tmp_path / "digits"
    (ds / "train_db").mkdir(parents=True)
    (ds / "labels.txt").write_text("a\nb\n")
    env = lmdb.open(str(ds / "train_db"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        d = caffe_pb2.Datum(label=1, encoded=True, data=cv2.imencode(".png", gradient(12, 9))[1].tobytes())
        txn.put(b"00000000_1", d.SerializeToString())
    env.close()
    code, out = verify(ds / "train_db")
    assert code == 0 and out.startswith("etl verify: OK, 1 record checked"), out


def test_a_database_caffe_wrote_gets_the_checks_it_can(tmp_path, caffe_pb2):
    """No .etl/: every record a Datum whose image decodes; a value that is not one is named by its key."""
    db = tmp_path / "caffe_db"
    env = lmdb.open(str(db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(3):
            d = caffe_pb2.Datum(label=i, encoded=True)
            d.data = cv2.imencode(".jpg", gradient(20 + i, 10))[1].tobytes()
            txn.put(b"%08d_im%d.jpg" % (i, i), d.SerializeToString())
    env.close()
    code, out = verify(db)
    assert code == 0 and out.startswith("etl verify: OK, 3 records checked"), out
    assert "note: no etl imageset report" in out
    env = lmdb.open(str(db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(b"00000001_im1.jpg", caffe_pb2.Datum(label=1, encoded=True, data=b"not an image").SerializeToString())
    env.close()
    code, out = verify(db)
    assert code == 1 and "record 1 (00000001_im1.jpg): holds data that is not an image OpenCV can decode" in out


def test_a_split_database_folder_is_checked_as_that_split_of_its_dataset(small_tree, tmp_path):
    out = tmp_path / "ds"
    assert run_cli("convert", str(small_tree / "train"), str(out), "--quiet").returncode == 0
    proc = run_cli("verify", str(out / "train_db"), "--quiet")
    assert proc.returncode == 0 and "note" not in proc.stdout, proc.stdout  # its checksums and list: no note
