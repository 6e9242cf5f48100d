"""`etl verify` finds damage: changed record bytes (checksum sidecar), altered list labels, a bad mean, a cut
data.mdb, and a db folder given for the dataset; the reader refuses a cut data.mdb."""

import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import etl

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
