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


def in_process(capsys, *args: object) -> subprocess.CompletedProcess:
    """`etl ARGS --quiet` run by etl.cli.main in this process (no interpreter to start), as run_cli returns it."""
    from etl.cli import main

    code = main([*map(str, args), "--quiet"])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


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
def test_every_file_merge_reads_back_damaged_is_one_line_naming_it(sharded, which, damage, capsys):
    _, out = sharded
    path = {"manifest": out / "train_db" / MANIFEST, "done marker": shard(out, 1) / CHECKPOINT_DIR / DONE,
            "shard sums": shard(out, 1) / CHECKPOINT_DIR / "train_db.sums"}[which]
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(DAMAGES[damage])
    err = one_line(in_process(capsys, "merge", out), 2)
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


# ---- case 11: etl mean on a full or read-only disk -------------------------------------------------------

def test_mean_on_a_full_disk_is_one_line_and_leaves_no_tmp(one_machine, tmp_path):  # noqa: F811
    ref, _ = one_machine
    with small_disk(tmp_path / "small", "64k") as disk:  # the BlobProto of 3x224x224 floats is ~600 KB
        target = disk / "mean.binaryproto"
        err = one_line(run_cli("mean", str(ref / "train_db"), str(target), "--quiet"), 1)
        assert "disk is full" in err and f"etl mean {ref / 'train_db'} {target}" in err
        assert sorted(p.name for p in disk.iterdir()) == []
        remount(disk, "size=8m")  # room made: the advice works
        assert run_cli("mean", str(ref / "train_db"), str(target), "--quiet").returncode == 0
        assert run_cli("mean", str(ref / "train_db"), str(tmp_path / "room.binaryproto"), "--quiet").returncode == 0
        assert target.read_bytes() == (tmp_path / "room.binaryproto").read_bytes()


def test_mean_into_a_read_only_folder_is_one_line_before_the_work(one_machine, tmp_path):  # noqa: F811
    ref, _ = one_machine
    with small_disk(tmp_path / "small", "1m") as disk:
        remount(disk, "ro")
        err = one_line(run_cli("mean", str(ref / "train_db"), str(disk / "mean.binaryproto"), "--quiet"), 2)
        assert "cannot write in" in err and str(disk) in err
        assert list(disk.iterdir()) == []


# ---- a sharded split is the one split it is ---------------------------------------------------------------

def test_mean_of_a_sharded_split_is_the_one_database_mean(sharded, tmp_path):
    ref, out = sharded
    for name, db in (("sharded", out / "train_db"), ("one", ref / "train_db")):
        proc = run_cli("mean", str(db), str(tmp_path / f"{name}.binaryproto"), "--quiet")
        assert proc.returncode == 0, proc.stderr
    for ext in ("binaryproto", "jpg"):
        assert (tmp_path / f"sharded.{ext}").read_bytes() == (tmp_path / f"one.{ext}").read_bytes()
    err = one_line(run_cli("mean", str(out)), 2)  # the dataset folder: its splits are named, not its shards
    assert f"{out / 'train_db'}, {out / 'val_db'}" in err and "00000-of-" not in err


def test_verify_of_a_sharded_split_checks_that_split(sharded):
    _, out = sharded
    proc = run_cli("verify", str(out / "train_db"), "--quiet")
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    (shard(out, 1) / CHECKPOINT_DIR / "train_db.sums").unlink()
    proc = run_cli("verify", str(out / "train_db"), "--quiet")
    assert proc.returncode == 1 and "train_db.sums" in proc.stdout and str(shard(out, 1)) in proc.stdout


@pytest.mark.parametrize("damage", [*DAMAGES, "missing"])
def test_a_damaged_manifest_is_one_line_for_mean_and_verify(sharded, damage, capsys):
    _, out = sharded
    manifest = out / "train_db" / MANIFEST
    if damage == "missing":
        manifest.unlink()
    else:
        manifest.write_bytes(DAMAGES[damage])
    mean = in_process(capsys, "mean", out / "train_db")
    verify = in_process(capsys, "verify", out)
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    if damage == "missing":  # a folder of shards without its manifest: resume the conversion that writes it
        assert f"no {MANIFEST}" in one_line(mean, 2) and "--resume" in mean.stderr and "give one of" not in mean.stderr
        assert [ln for ln in verify.stdout.splitlines() if f"no {MANIFEST}" in ln and "--resume" in ln]
    else:
        assert MANIFEST in one_line(mean, 2) and "--resume" in mean.stderr
        assert [ln for ln in verify.stdout.splitlines() if MANIFEST in ln and "--resume" in ln], verify.stdout


@pytest.mark.parametrize("damage", [*DAMAGES, "missing"])
def test_a_shard_merge_refuses_is_a_problem_for_verify_naming_its_file(sharded, damage, capsys):
    """verify checks a split's shards as etl merge does: a done marker it refuses is never OK."""
    _, out = sharded
    marker = shard(out, 1) / CHECKPOINT_DIR / DONE
    if damage == "missing":
        marker.unlink()
    else:
        marker.write_bytes(DAMAGES[damage])
    merge = one_line(in_process(capsys, "merge", out), 2)
    proc = in_process(capsys, "verify", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    found = [line for line in proc.stdout.splitlines() if str(shard(out, 1)) in line and DONE in line]
    assert found and found[0].removeprefix("  - ") == merge.removeprefix("etl: error: ").rstrip("\n"), proc.stdout


def test_mean_of_one_shard_notes_it_as_verify_does(sharded):
    _, out = sharded
    one = shard(out, 1)
    mean = run_cli("mean", str(one), "--quiet")
    verify = run_cli("verify", str(one), "--quiet")
    assert mean.returncode == 0 and verify.returncode == 0, mean.stderr + verify.stdout
    notes = [line.split("note: ", 1)[1] for line in mean.stderr.splitlines() + verify.stdout.splitlines()
             if "note: " in line and "one shard of" in line]
    assert len(notes) == 2, (mean.stderr, verify.stdout)
    assert notes[0] == f"{one} is one shard of {one.parent}: etl mean {one.parent} takes the mean of the whole split"
    assert notes[1].startswith(f"{one} is one shard of {one.parent}: etl verify {one.parent} checks the whole")
    assert "one shard" not in run_cli("mean", str(out / "train_db"), "--quiet").stderr


@pytest.mark.parametrize("damage", [*DAMAGES, "missing"])
def test_a_damaged_report_is_one_problem_naming_it(sharded, damage, capsys):
    _, out = sharded
    report = out / "report.json"
    if damage == "missing":
        report.unlink()
    else:
        report.write_bytes(DAMAGES[damage])
    proc = in_process(capsys, "verify", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "report.json" in proc.stdout and len(proc.stdout.splitlines()) == 2, proc.stdout


# ---- the output lock covers every database inside OUT ----------------------------------------------------

def test_no_tool_reads_or_merges_a_dataset_a_run_is_writing(sharded):
    from etl.outlock import exclusive

    _, out = sharded
    with exclusive(out):  # as a convert --resume of OUT holds it
        for args in (("merge", out), ("mean", out / "train_db"), ("mean", shard(out, 0)), ("verify", out),
                     ("verify", out / "train_db"), ("verify", shard(out, 0)), ("mean", out / "val_db")):
            err = one_line(run_cli(args[0], str(args[1]), "--quiet"), 2)
            assert str(out) in err and ("in use" in err or "being written" in err), (args, err)
    assert leftovers(out) == [] and (out / "train_db" / MANIFEST).is_file()


# ---- case 12: labels.txt with two lines swapped ------------------------------------------------------------

def swap_labels(out: Path, a: int, b: int) -> None:
    lines = (out / "labels.txt").read_text().splitlines()
    lines[a], lines[b] = lines[b], lines[a]
    (out / "labels.txt").write_text("".join(f"{line}\n" for line in lines))


def equal_classes(out: Path, split: str = "train") -> tuple[int, int]:
    """Two labels whose classes have as many records: a swap of their lines passes every count."""
    per_class = json.loads((out / "report.json").read_text())["splits"][split]["per_class"]
    names = (out / "labels.txt").read_text().splitlines()
    counts = [per_class.get(name, 0) for name in names]
    a, b = next((a, b) for a in range(len(counts)) for b in range(a + 1, len(counts)) if counts[a] == counts[b])
    return a, b


def verify_swapped(out: Path) -> str:
    assert run_cli("verify", str(out), "--quiet").returncode == 0
    swap_labels(out, *equal_classes(out))
    proc = run_cli("verify", str(out), "--quiet")
    assert proc.returncode == 1, proc.stdout
    return proc.stdout


def test_swapped_labels_of_a_folder_tree_are_found(tmp_path):
    from etl.synth import TreeSpec, make_tree

    make_tree(tmp_path / "train", TreeSpec(classes=3, per_class=4, seed=3, awkward=False))
    out = tmp_path / "ds"
    assert run_cli("convert", str(tmp_path / "train"), str(out), "--val-pct", "25", "--workers", "1",
                   "--quiet").returncode == 0
    report = verify_swapped(out)
    assert "train.txt line" in report and "val.txt line" in report and "but its path is in class" in report


def test_swapped_labels_of_an_archive_are_found_and_a_flat_val_says_nothing(tmp_path):
    from etl.synthilsvrc import IlsvrcSpec, make_ilsvrc

    made = make_ilsvrc(tmp_path / "il", IlsvrcSpec(classes=3, per_class=3, val_per_class=2, seed=5,
                                                   extracted=False))
    out = tmp_path / "ds"
    proc = run_cli("convert", str(made.train_tar), str(out), "--val", str(made.val_tar), "--val-labels",
                   str(made.labels["devkit tar.gz"]), "--workers", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = verify_swapped(out)
    assert "train.txt line" in report and ".tar" not in report.split("class '")[-1]
    assert "val.txt line" not in report  # the val images' paths name no class: nothing to cross-check


def test_a_list_files_own_labels_are_not_taken_for_a_swap(tmp_path):
    """A list file's labels are the list's: its paths' folders need not be labels.txt's names."""
    from etl.synth import TreeSpec, make_tree

    make_tree(tmp_path / "t", TreeSpec(classes=2, per_class=3, seed=4, awkward=False))
    classes = sorted(p.name for p in (tmp_path / "t").iterdir())
    images = sorted((tmp_path / "t").rglob("*.JPEG"))
    (tmp_path / "list.txt").write_text("".join(f"{p} {classes.index(p.parent.name)}\n" for p in images))
    (tmp_path / "names.txt").write_text("".join(f"{name}\n" for name in reversed(classes)))
    out = tmp_path / "ds"
    assert run_cli("convert", str(tmp_path / "list.txt"), str(out), "--labels", str(tmp_path / "names.txt"),
                   "--val-pct", "0", "--workers", "1", "--quiet").returncode == 0
    proc = run_cli("verify", str(out), "--quiet")
    assert proc.returncode == 0, proc.stdout


def convert_list(tmp_path: Path, names: bool) -> tuple[Path, tuple[str, ...]]:
    """A dataset from a list file: with --labels naming its classes, or its numbers as labels.txt; the command."""
    from etl.synth import TreeSpec, make_tree

    make_tree(tmp_path / "t", TreeSpec(classes=3, per_class=3, seed=6, awkward=False))
    classes = sorted(p.name for p in (tmp_path / "t").iterdir())
    images = sorted((tmp_path / "t").rglob("*.JPEG"))
    (tmp_path / "list.txt").write_text("".join(f"{p} {classes.index(p.parent.name)}\n" for p in images))
    (tmp_path / "names.txt").write_text("".join(f"{name}\n" for name in classes))
    out = tmp_path / "ds"
    command = ("convert", str(tmp_path / "list.txt"), str(out), *(("--labels", str(tmp_path / "names.txt"))
                                                                   if names else ()),
               "--val-pct", "0", "--workers", "1", "--quiet")
    assert run_cli(*command).returncode == 0
    return out, command


@pytest.mark.parametrize("names", [True, False], ids=["--labels names", "numbers"])
def test_swapped_labels_of_a_list_input_are_found_by_the_runs_record_of_labels_txt(tmp_path, names):
    """A list's paths name no class to cross-check with: report.json's sha256 of the labels.txt written does."""
    out, command = convert_list(tmp_path, names)
    written = (out / "labels.txt").read_bytes()
    stdout = verify_swapped(out)
    assert f"{out / 'labels.txt'} is not the file the conversion wrote" in stdout, stdout
    assert run_cli(*command, "--resume").returncode == 0  # the advice, taken literally: labels.txt written again
    assert (out / "labels.txt").read_bytes() == written
    assert run_cli("verify", str(out), "--quiet").returncode == 0


def test_a_resume_keeps_the_record_of_labels_txt(tmp_path):
    out, command = convert_list(tmp_path, names=True)
    written = json.loads((out / "report.json").read_text())["labels_sha256"]
    assert run_cli(*command, "--resume").returncode == 0
    assert json.loads((out / "report.json").read_text())["labels_sha256"] == written
    swap_labels(out, 0, 1)
    assert run_cli("verify", str(out), "--quiet").returncode == 1


def test_an_older_etls_report_without_the_record_of_labels_txt_verifies_as_before(tmp_path):
    out, _ = convert_list(tmp_path, names=True)
    report = json.loads((out / "report.json").read_text())
    report.pop("labels_sha256", None)
    (out / "report.json").write_text(json.dumps(report))
    swap_labels(out, 0, 1)  # nothing can tell, as before: no new problem
    proc = run_cli("verify", str(out), "--quiet")
    assert proc.returncode == 0 and proc.stdout.startswith("etl verify: OK"), proc.stdout


def test_the_advice_for_a_damaged_shard_works_when_followed(small_tree, tmp_path):
    """A shard cut short: merge, mean and verify say to remove it and resume the convert; done literally, the
    merge gives the bytes of a run without shards."""
    args = [str(small_tree / "train"), "--val-pct", "0", "--workers", "2", "--chunk-size", "4", "--quiet"]
    assert run_cli("convert", args[0], str(tmp_path / "one"), *args[1:]).returncode == 0
    out = tmp_path / "sh"
    assert run_cli("convert", args[0], str(out), *args[1:], "--shard-size", "8").returncode == 0
    cut = shard(out, 1)
    os.truncate(cut / "data.mdb", (cut / "data.mdb").stat().st_size // 2)
    for command in (("merge", out), ("mean", out / "train_db"), ("mean", cut), ("verify", cut)):
        err = one_line(run_cli(command[0], str(command[1]), "--quiet"), 2)
        assert f"remove the shard folder {cut} and run the etl convert command that wrote {out} again, with " \
               "--resume" in err, err
    verify = run_cli("verify", str(out), "--quiet")
    assert verify.returncode == 1 and f"remove the shard folder {cut}" in verify.stdout
    shutil.rmtree(cut)
    assert run_cli("convert", args[0], str(out), *args[1:], "--shard-size", "8", "--resume").returncode == 0
    assert run_cli("merge", str(out / "train_db"), "--quiet").returncode == 0  # one split: the split named
    assert_same(tmp_path / "one", out, splits=("train",))


def test_verify_of_one_shard_says_what_checks_the_split(sharded):
    _, out = sharded
    proc = run_cli("verify", str(shard(out, 0)), "--quiet")
    assert proc.returncode == 0 and f"etl verify {out / 'train_db'} checks the whole split" in proc.stdout
    assert "etl imageset" not in proc.stdout
