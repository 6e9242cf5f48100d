"""`etl verify` finds damage: changed record bytes (checksum sidecar), altered list labels, a bad mean, a cut
data.mdb, and a db folder given for the dataset; the reader refuses a cut data.mdb."""

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest

import etl
from etl.datum import encode_blobproto

from .conftest import run_cli
from .test_end_to_end import all_records


@pytest.fixture(scope="module")
def pristine(small_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "ds"
    etl.convert(small_tree / "train", out, val=small_tree / "val", workers=2, chunk_size=5, progress=False)
    return out


@pytest.fixture()
def ds(pristine, tmp_path):
    """A fresh copy of the converted dataset, to damage."""
    out = tmp_path / "ds"
    shutil.copytree(pristine, out)
    return out


def damage_on_disk(db: Path, index: int, at: float, new: bytes | None = None) -> bytes:
    """Change bytes of record `index` inside data.mdb itself, as storage rot would; returns its key."""
    key, value = all_records(db)[index]
    data = bytearray((db / "data.mdb").read_bytes())
    start = data.find(value)
    assert start >= 0 and data.find(value, start + 1) < 0
    pos = start + int(len(value) * at)
    if new is None:
        data[pos] ^= 0x5A
    else:
        data[pos:pos + len(new)] = new
    (db / "data.mdb").write_bytes(bytes(data))
    return key


def sums(out: Path, split: str) -> list[tuple[bytes, str]]:
    lines = (out / f"{split}_db.sums").read_bytes().splitlines()
    return [(k, d.decode()) for k, d in (line.split(b" ") for line in lines)]


def test_every_record_has_its_checksum_in_the_sidecar(pristine):
    for split in ("train", "val"):
        records = all_records(pristine / f"{split}_db")
        assert sums(pristine, split) == [(k, f"{zlib.crc32(v):08x}") for k, v in records]
    check = etl.verify(pristine, progress=False)
    assert check.problems == [] and check.notes == []


@pytest.mark.parametrize("at", [0.0, 0.3, 0.5, 0.9, 0.999])
def test_a_changed_byte_in_a_record_is_reported_with_its_key(ds, at):
    key = damage_on_disk(ds / "train_db", 7, at)
    check = etl.verify(ds, progress=False)
    assert check.problems, "a changed byte passed verify"
    assert any(key.decode() in p and "train_db.sums" in p for p in check.problems), check.problems


def test_damage_that_makes_libjpeg_warn_is_a_problem_in_verifys_words_not_a_python_warning(ds):
    damage_on_disk(ds / "train_db", 3, 0.5, b"\xff\xd3")  # a restart marker in the middle of the scan
    for sidecar in (True, False):
        if not sidecar:
            for split in ("train", "val"):
                (ds / f"{split}_db.sums").unlink()
        proc = run_cli("verify", str(ds), "--quiet")
        assert proc.returncode == 1, proc.stdout
        assert "Warning" not in proc.stdout + proc.stderr and proc.stderr == "", proc.stderr
        assert "00000003_" in proc.stdout and "libjpeg" in proc.stdout, proc.stdout


def test_a_dataset_without_checksums_verifies_with_a_one_line_note(ds):
    for split in ("train", "val"):
        (ds / f"{split}_db.sums").unlink()
    job = ds / ".etl" / "job.json"
    job.write_text(json.dumps({**json.loads(job.read_text()), "etl_version": "0.3.0"}))  # before checksums
    proc = run_cli("verify", str(ds), "--quiet")
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("etl verify: OK")
    assert len(lines) == 2 and "could not be checked against checksums" in lines[1], proc.stdout


def test_checksums_lost_from_a_dataset_an_etl_with_checksums_wrote_are_a_problem(ds):
    (ds / "val_db.sums").unlink()
    proc = run_cli("verify", str(ds), "--quiet")
    assert proc.returncode == 1 and "no val_db.sums, though etl " in proc.stdout, proc.stdout


def test_a_sidecar_cut_short_or_for_other_records_is_a_problem(ds):
    path = ds / "train_db.sums"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]))
    assert any("train_db.sums has" in p for p in etl.verify(ds, progress=False).problems)


def test_a_changed_label_in_the_list_file_is_reported_with_its_line(ds):
    path = ds / "train.txt"
    lines = path.read_text().splitlines(keepends=True)
    name, label = lines[4].rsplit(" ", 1)
    lines[4] = f"{name} {(int(label) + 1) % 3}\n"
    path.write_text("".join(lines))
    problems = etl.verify(ds, progress=False).problems
    assert any("train.txt line 5" in p and "00000004_" + label.strip() in p for p in problems), problems


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0, 256.5])
def test_a_mean_with_a_value_that_is_not_a_pixel_is_a_problem(ds, bad):
    mean = np.full((3, 224, 224), 100.0, np.float32)
    mean[1, 10, 20] = bad
    (ds / "mean.binaryproto").write_bytes(encode_blobproto(mean))
    problems = etl.verify(ds, progress=False).problems
    assert any(p.startswith("mean.binaryproto") for p in problems), problems


def test_a_cut_data_mdb_is_one_line_not_a_sigbus(ds):
    data = ds / "train_db" / "data.mdb"
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size // 2)
    proc = run_cli("verify", str(ds), "--quiet")
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert any("train_db" in ln and "cut short" in ln for ln in proc.stdout.splitlines()), proc.stdout


def test_the_reader_raises_a_clear_error_on_a_cut_data_mdb(ds):
    data = ds / "train_db" / "data.mdb"
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size - 4096)
    code = ("import sys; from etl.reader import LmdbDataset, DamagedDatabase\n"
            "try:\n    list(LmdbDataset(sys.argv[1]))\n"
            "except DamagedDatabase as exc:\n    print(exc); sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(ds / "train_db")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    assert "data.mdb" in proc.stdout and "cut short" in proc.stdout


def test_a_split_database_folder_verifies_that_split_of_the_dataset(ds):
    """README: `etl verify DB_NAME` checks one LMDB; a split's folder is checked as that split of its dataset
    (its checksums, list and labels), not refused."""
    proc = run_cli("verify", str(ds / "val_db"), "--quiet")
    val = len(all_records(ds / "val_db"))
    assert proc.returncode == 0 and proc.stdout.startswith(f"etl verify: OK, {val} records checked"), proc.stdout
    (ds / "train.txt").write_text("")  # another split's damage is not this split's
    assert run_cli("verify", str(ds / "val_db"), "--quiet").returncode == 0
    damage_on_disk(ds / "val_db", 1, 0.5)
    proc = run_cli("verify", str(ds / "val_db"), "--quiet")
    assert proc.returncode == 1 and "val_db.sums" in proc.stdout


def test_records_damaged_through_lmdb_are_found_too(ds):
    env = lmdb.open(str(ds / "val_db"))
    with env.begin(write=True) as txn:
        key, value = next(iter(txn.cursor()))
        key, value = bytes(key), bytearray(value)
        value[len(value) // 2] ^= 1  # in the image data: it still decodes
        txn.put(key, bytes(value))
    env.close()
    problems = etl.verify(ds, progress=False).problems
    assert any(key.decode() in p for p in problems), problems


def test_a_sidecar_that_disagrees_everywhere_lists_twenty_and_counts_the_rest(ds):
    path = ds / "train_db.sums"
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"".join(line[:-8] + b"00000000\n" for line in lines))
    check = etl.verify(ds, progress=False)
    listed = [p for p in check.problems if "bytes changed since it was written" in p]
    assert len(listed) == 20 and check.problems[-1] == f"... and {len(lines) - 20} more train_db records that " \
                                                       "train_db.sums disagrees with"
    assert check.found == len(lines)
