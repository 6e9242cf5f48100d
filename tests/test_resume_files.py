"""What `etl convert` writes and `--resume` reads back: a full disk at any of its files gives one line whose advice
works, and every checkpoint file a resume reads may be damaged, empty, missing or of the wrong JSON type."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from etl.synth import TreeSpec, make_tree

from .test_faults import _mount_tmpfs, dataset, etl

ARGS = ("--val-pct", "20", "--chunk-size", "2", "--commit-every", "4", "--quiet", "--workers", "1")
PAGE = 4096  # tmpfs counts its space in pages: a file of a few bytes takes one


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_files")
    make_tree(root / "train", TreeSpec(classes=3, per_class=8, seed=31, awkward=False))
    return root / "train"


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    proc = etl("convert", tree, out, *ARGS)
    assert proc.returncode == 0, proc.stderr
    return dataset(out)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (root only): the test fills it to leave as many pages free as it wants."""
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount_tmpfs(disk, "4m"):
        pytest.skip("needs root and permission to mount a size-limited tmpfs to simulate a full disk")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def pages_used(disk: Path) -> int:
    st = os.statvfs(disk)
    return (st.f_blocks - st.f_bfree) * st.f_frsize // PAGE


def fill(disk: Path, free_pages: int) -> Path:
    """Leave exactly free_pages pages free on the tmpfs."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - free_pages * PAGE))
    assert os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize == free_pages * PAGE
    return filler


def pages_before(tree: Path, disk: Path, name: str) -> int:
    """Pages a clean run has used by the time it writes `name`, the last file it writes."""
    out = disk / "measure"
    before = pages_used(disk)
    assert etl("convert", tree, out, *ARGS).returncode == 0
    last = -(-(out / name).stat().st_size // PAGE)  # written last: nothing after it
    used = pages_used(disk) - before - last
    shutil.rmtree(out)
    return used


def follow(advice: str, tree: Path, out: Path) -> subprocess.CompletedProcess:
    """The command the advice gives, taken literally: the same command, with --resume if it says so."""
    assert advice.count("\n") == 1 and "Traceback" not in advice, advice  # one line
    again = ("--resume",) if "with --resume" in advice else ()
    return etl("convert", tree, out, *ARGS, *again)


@pytest.mark.parametrize("where", ["job.json", "labels.txt", "report.json"])
def test_a_full_disk_at_any_file_gives_one_line_and_its_advice_works(tree, reference, small_disk, where):
    out = small_disk / "out"
    # The lock takes the first page (its pid), job.json the next, labels.txt the third (a folder has no index).
    free = {"job.json": 1, "labels.txt": 2}.get(where) or pages_before(tree, small_disk, where)
    filler = fill(small_disk, free)
    proc = etl("convert", tree, out, *ARGS)
    assert proc.returncode == 1 and "the disk is full" in proc.stderr, proc.stderr
    assert f"could not write {'the checkpoint (.etl/job.json)' if where == 'job.json' else where}" in proc.stderr
    if where == "job.json":  # nothing to resume yet: the advice is the same command, and --resume says so too
        assert "with --resume" not in proc.stderr
        filler.unlink()
        resumed = etl("convert", tree, out, *ARGS, "--resume")
        assert resumed.returncode == 2 and "run the same command without --resume" in resumed.stderr
    else:
        filler.unlink()
    again = follow(proc.stderr, tree, out)
    assert again.returncode == 0, again.stderr
    assert dataset(out) == reference
