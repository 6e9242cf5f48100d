"""`etl verify` finds damage: changed record bytes (checksum sidecar), altered list labels, a bad mean, a cut
data.mdb, and a db folder given for the dataset; the reader refuses a cut data.mdb."""

import shutil
import zlib
from pathlib import Path

import pytest

import etl

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
