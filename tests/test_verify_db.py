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
    run(root, listed, db, "--resize_width=24", "--resize_height=20")
    return db


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
    assert "record 1 (" in out and f"label {label}, .etl/train.txt says {int(label) + 5}" in out
    assert "record 3 (" in out and ".etl/train.txt lists elsewhere/x.jpg" in out


def test_a_record_of_another_size_is_found(imageset_db):
    key, _ = all_records(imageset_db)[0]
    other = np.ascontiguousarray(gradient(10, 8).transpose(2, 0, 1)).tobytes()
    env = lmdb.open(str(imageset_db))
    with env.begin(write=True) as txn:
        txn.put(key, encode_caffe_datum(other, 0, (3, 8, 10)))
    env.close()
    code, out = verify(imageset_db)
    assert code == 1 and "8x10, resized to 20x24 expected" in out
    assert "disagrees" in out or "bytes changed" in out  # the checksum sees it too


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
    assert "note: no etl report" in out
    env = lmdb.open(str(db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(b"00000001_im1.jpg", caffe_pb2.Datum(label=1, encoded=True, data=b"not an image").SerializeToString())
    env.close()
    code, out = verify(db)
    assert code == 1 and "record 1 (00000001_im1.jpg): holds data that is not an image OpenCV can decode" in out


def test_a_digits_database_folder_still_points_to_its_dataset(small_tree, tmp_path):
    out = tmp_path / "ds"
    assert run_cli("convert", str(small_tree / "train"), str(out), "--quiet").returncode == 0
    proc = run_cli("verify", str(out / "train_db"))
    assert proc.returncode == 2 and "give the dataset folder (the one holding labels.txt)" in proc.stderr
