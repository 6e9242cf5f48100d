"""What `etl convert` writes and `--resume` reads back: a full disk at any of its files gives one line whose advice
works, and every checkpoint file a resume reads may be damaged, empty, missing or of the wrong JSON type."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from etl.synth import TreeSpec, make_tree

from .test_faults import _mount_tmpfs, dataset, etl
from .test_misuse import small_jpeg

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


# ---- every file --resume reads back may be damaged, empty, missing or the wrong JSON type -------------

@pytest.fixture(scope="module")
def converted(tree, tmp_path_factory):
    """A finished one-database run and a finished sharded run: --resume reads every checkpoint file of each."""
    base = tmp_path_factory.mktemp("converted")
    for name, extra in (("one", ()), ("sharded", ("--shard-size", "10"))):
        proc = etl("convert", tree, base / name, *ARGS, *extra)
        assert proc.returncode == 0, proc.stderr
    return base


NOT_A_SUM = b"\x93NUMPY\x01\x00v\x00{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }" + b" " * 47 + \
    b"\n" + bytes(32)
DAMAGE = {  # (file under OUT, damage): the bytes it is left with (None: removed)
    ("job.json", "empty"): b"", ("job.json", "wrong JSON type"): b"[]", ("job.json", "missing"): None,
    ("job.json", "a field of the wrong type"): b'{"settings": [], "splits": {}}',
    ("train.state.json", "empty"): b"", ("train.state.json", "wrong JSON type"): b'"done"',
    ("train.state.json", "a field of the wrong type"): b'{"records": "all"}', ("train.state.json", "missing"): None,
    ("train.sum.npy", "not an array"): b"garbage", ("train.sum.npy", "the wrong shape"): NOT_A_SUM,
    ("train.sum.npy", "missing"): None,
    ("train.skipped.jsonl", "a damaged line"): b'not json\n{"chunk": 0}\n',
    ("train.skipped.jsonl", "wrong JSON type"): b"[1, 2]\n", ("train.skipped.jsonl", "missing"): None,
    ("train.txt", "empty"): b"", ("train.txt", "cut"): b"n0/a.JPEG 0\n", ("train.txt", "missing"): None,
    ("done.json", "empty"): b"", ("done.json", "wrong JSON type"): b"{}",
    ("done.json", "a field of the wrong type"): None,  # written below: its stats' count is text
}


def damage(out: Path, name: str, how: str) -> Path:
    where = {"job.json": out / ".etl" / "job.json", "train.txt": out / "train.txt",
             "done.json": out / "train_db" / "00000-of-00002" / ".etl" / "done.json"}.get(name)
    if where is None:
        stem = name.split(".")[1]
        where = next((out / ".etl").glob(f"train.{stem}*")) if stem == "sum" else out / ".etl" / name
    data = DAMAGE[name, how]
    if name == "done.json" and data is None:
        record = json.loads(where.read_text())
        data = json.dumps({**record, "stats": {**record["stats"], "written": "ten"}}).encode()
    if data is None:
        where.unlink()
    else:
        where.write_bytes(data)
    return where


@pytest.mark.parametrize("name,how", list(DAMAGE))
def test_each_file_a_resume_reads_back_damaged_gives_one_line_naming_it(converted, tree, tmp_path, reference,
                                                                         name, how):
    out = tmp_path / "out"
    sharded = name == "done.json"
    shutil.copytree(converted / ("sharded" if sharded else "one"), out)
    where = damage(out, name, how)
    extra = ("--shard-size", "10") if sharded else ()
    proc = etl("convert", tree, out, *ARGS, *extra, "--resume")
    assert proc.returncode in (1, 2) and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, \
        proc.stderr
    assert str(where if how != "missing" or name != "job.json" else ".etl/job.json") in proc.stderr
    # what to do, taken literally
    if "remove it and run the same command with --resume" in proc.stderr:
        where.unlink()
        again = etl("convert", tree, out, *ARGS, *extra, "--resume")
    else:
        assert "convert again with --overwrite in place of --resume" in proc.stderr
        again = etl("convert", tree, out, *ARGS, *extra, "--overwrite")
    assert again.returncode == 0, again.stderr
    if not sharded:
        assert dataset(out) == reference


def test_a_val_labels_file_changed_before_a_resume_is_named_and_the_advice_works(tree, tmp_path):
    classes = sorted(path.name for path in tree.iterdir())
    val = tmp_path / "val"
    val.mkdir()
    for i in range(1, 5):
        (val / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(small_jpeg())
    labels = tmp_path / "labels.txt"
    first = "".join(f"ILSVRC2012_val_{i:08d}.JPEG {classes[i % 2]}\n" for i in range(1, 5))
    labels.write_text(first)
    out, args = tmp_path / "out", ("--val", val, "--val-labels", labels, "--quiet", "--workers", "1")
    assert etl("convert", tree, out, *args).returncode == 0
    labels.write_text(first.replace(classes[0], classes[2]))  # a class corrected since: same name, other labels
    proc = etl("convert", tree, out, *args, "--resume")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"etl: error: --resume: the val labels file {labels} changed since the first run (the classes it gives the "
        "val images differ): put back the first run's file and resume, or convert again with --overwrite in place "
        "of --resume"), proc.stderr
    labels.write_text(first)  # the advice, followed literally
    assert etl("convert", tree, out, *args, "--resume").returncode == 0


# ---- a checksum sidecar that lost lines is damage, not an older etl's dataset --------------------------------

@pytest.mark.parametrize("where,how", [("one", "cut"), ("one", "missing"), ("shard", "cut")])
def test_a_sums_file_that_lost_lines_is_refused_on_resume_not_summed_again(converted, tree, tmp_path, reference,
                                                                          where, how):
    """Summed again from the database, a record damaged since would get a line saying it is good."""
    out = tmp_path / "out"
    shutil.copytree(converted / ("sharded" if where == "shard" else "one"), out)
    extra = ("--shard-size", "10") if where == "shard" else ()
    sums = out / "train_db.sums"
    if where == "shard":  # a shard left unfinished: the resume continues it from its commits
        shard = out / "train_db" / "00000-of-00002"
        (shard / ".etl" / "done.json").unlink()
        sums = shard / ".etl" / "train_db.sums"
    if how == "cut":
        sums.write_bytes(sums.read_bytes().splitlines(keepends=True)[0])
    else:
        sums.unlink()
    proc = etl("convert", tree, out, *ARGS, *extra, "--resume")
    assert proc.returncode in (1, 2) and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, \
        proc.stderr
    assert str(sums) in proc.stderr and "convert again with --overwrite in place of --resume" in proc.stderr
    again = etl("convert", tree, out, *ARGS, *extra, "--overwrite")  # the advice, taken literally
    assert again.returncode == 0, again.stderr
    if where == "one":
        assert dataset(out) == reference


def test_release_tuple_orders_versions_by_number_and_started_by_reads_job_json(tmp_path):
    from etl.checkpoint import SUMS_SINCE, Checkpoint, release_tuple

    assert release_tuple("0.10.1") > release_tuple("0.9") >= SUMS_SINCE > release_tuple("0.3.0")
    checkpoint = Checkpoint(tmp_path)
    assert checkpoint.started_by() is None and checkpoint.sums_owed()  # no job.json: a shard's checkpoint
    checkpoint.dir.mkdir()
    checkpoint.path("job.json").write_text('{"settings": {}, "splits": {}}')  # before 0.3: no version recorded
    assert checkpoint.started_by() == "0.2" and not checkpoint.sums_owed()
    checkpoint.path("job.json").write_text('{"settings": {}, "splits": {}, "etl_version": "0.4.0"}')
    assert checkpoint.started_by() == "0.4.0" and checkpoint.sums_owed()
