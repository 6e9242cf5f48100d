"""etl merge, etl mean and etl verify misused (issue 21): damaged shards and sidecars, full and read-only disks,
sharded splits, the output lock: one line each, nothing left behind, and the advice works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from etl.layout import CHECKPOINT_DIR
from etl.merge import DONE, MANIFEST

from .conftest import run_cli
from .test_faults import _mount_tmpfs
from .test_merge import assert_same, make_shards, one_machine  # noqa: F401 (a fixture)


@contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (root only), unmounted at the end."""
    if os.geteuid() != 0 or not _mount_tmpfs(where, size):
        pytest.skip("needs root and permission to mount a size-limited tmpfs to simulate a full or read-only disk")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def used_kb(where: Path) -> int:
    st = os.statvfs(where)
    return (st.f_blocks - st.f_bfree) * st.f_frsize // 1024


def one_line(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith((".merging", ".shards", ".deleting", ".tmp")))


@pytest.fixture
def sharded(one_machine, tmp_path):  # noqa: F811
    ref, s = one_machine
    out = tmp_path / "ds"
    make_shards(ref, out, s, "train", 8)
    make_shards(ref, out, s, "val", 4)
    return ref, out


def shard(out: Path, k: int = 1, split: str = "train") -> Path:
    return sorted((out / f"{split}_db").glob("*-of-*"))[k]


# ---- case 8: a cut data.mdb ------------------------------------------------------------------------------

def test_merge_of_a_cut_shard_is_one_line_not_a_sigbus_and_leaves_nothing(sharded):
    _, out = sharded
    data = shard(out, 1) / "data.mdb"
    os.truncate(data, data.stat().st_size // 3)
    err = one_line(run_cli("merge", str(out)), 2)
    assert "cut short" in err and str(shard(out, 1)) in err and "--resume" in err
    assert leftovers(out) == [] and (out / "train_db" / MANIFEST).is_file()


# ---- case 9: a full or read-only disk --------------------------------------------------------------------

def test_merge_on_a_full_disk_is_one_line_and_merging_again_gives_the_one_machine_bytes(one_machine, tmp_path):  # noqa: F811
    ref, s = one_machine
    with small_disk(tmp_path / "small", "64m") as disk:
        out = disk / "ds"
        make_shards(ref, out, s, "train", 8)
        make_shards(ref, out, s, "val", 4)
        room = used_kb(disk) + (ref / "train_db" / "data.mdb").stat().st_size // 2048  # half the merged train_db
        remount(disk, f"size={room}k")
        err = one_line(run_cli("merge", str(out), "--quiet"), 1)
        assert "disk is full" in err and f"etl merge {out}" in err
        assert leftovers(out) == [] and (out / "train_db" / MANIFEST).is_file()
        remount(disk, "size=64m")  # room made
        assert run_cli("merge", str(out), "--quiet").returncode == 0
        assert_same(ref, out)


def test_merge_on_a_read_only_disk_is_one_line(one_machine, tmp_path):  # noqa: F811
    ref, s = one_machine
    with small_disk(tmp_path / "small", "64m") as disk:
        out = disk / "ds"
        make_shards(ref, out, s, "train", 8)
        (out / CHECKPOINT_DIR).mkdir(exist_ok=True)
        remount(disk, "ro")
        err = one_line(run_cli("merge", str(out)), 2)
        assert "Read-only file system" in err and str(out) in err
        remount(disk, "rw")
        assert run_cli("merge", str(out), "--quiet").returncode == 0
        assert_same(ref, out, splits=("train",))


# ---- case 10: a shard without its checksums --------------------------------------------------------------

def test_a_shard_without_its_sums_is_refused_not_certified(sharded):
    _, out = sharded
    (shard(out, 2) / CHECKPOINT_DIR / "train_db.sums").unlink()
    err = one_line(run_cli("merge", str(out)), 2)
    assert "train_db.sums" in err and "certify" in err and str(shard(out, 2)) in err and "--resume" in err
    assert leftovers(out) == [] and not (out / "train_db.sums").exists()


# ---- every file merge reads back: damaged, empty, missing, of the wrong JSON type ------------------------

DAMAGES = {"garbage": b"\x00not json{", "empty": b"", "a list": b"[1, 2]", "a string": b'"x"',
           "wrong fields": b'{"shards": [{"name": 3}]}'}


@pytest.mark.parametrize("damage", [*DAMAGES, "missing"])
@pytest.mark.parametrize("which", ["manifest", "done marker", "shard sums"])
def test_every_file_merge_reads_back_damaged_is_one_line_naming_it(sharded, which, damage):
    _, out = sharded
    path = {"manifest": out / "train_db" / MANIFEST, "done marker": shard(out, 1) / CHECKPOINT_DIR / DONE,
            "shard sums": shard(out, 1) / CHECKPOINT_DIR / "train_db.sums"}[which]
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(DAMAGES[damage])
    err = one_line(run_cli("merge", str(out)), 2)
    assert path.name in err and "--resume" in err, err
    assert leftovers(out) == [] and not (out / "train_db" / "data.mdb").exists()


def test_a_sums_line_that_disagrees_stops_the_merge_and_leaves_nothing(sharded):
    _, out = sharded
    sums = shard(out, 3) / CHECKPOINT_DIR / "train_db.sums"
    lines = sums.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:-3] + b"00\n" if not lines[1].endswith(b"00\n") else lines[1][:-3] + b"11\n"
    sums.write_bytes(b"".join(lines))
    err = one_line(run_cli("merge", str(out), "--quiet"), 2)
    assert "disagrees" in err and str(shard(out, 3)) in err
    assert leftovers(out) == [] and (out / "train_db" / MANIFEST).is_file()
