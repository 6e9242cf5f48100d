"""Misuse that used to corrupt a dataset, hang or crash: each case fails on the code before its fix."""

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_cli
from .test_end_to_end import all_records


def hold_lock(out: Path, pid: int = 4242) -> int:
    """Take the output lock as a live run would, from this process."""
    (out / ".etl").mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".etl" / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{pid}\n".encode())
    return fd


def test_a_second_run_into_a_folder_in_use_stops_at_once_and_changes_nothing(small_tree, tmp_path):
    out = tmp_path / "o"
    args = ("convert", str(small_tree / "val"), str(out), "--val-pct", "0", "--workers", "1", "--quiet")
    assert run_cli(*args).returncode == 0
    before = all_records(out / "train_db"), (out / "train.txt").read_bytes()
    fd = hold_lock(out)
    try:
        for extra in (("--overwrite",), ("--resume",), ("--overwrite", "--width", "32")):
            proc = run_cli(*args, *extra)
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.strip() == f"etl: error: {out} is in use by another etl run (pid 4242): wait for it " \
                                          "to end, or choose another output folder"
        verify = run_cli("verify", str(out), "--quiet")
        assert verify.returncode == 2 and "is being written by an etl run (pid 4242)" in verify.stderr
    finally:
        os.close(fd)
    assert (all_records(out / "train_db"), (out / "train.txt").read_bytes()) == before
    assert run_cli("verify", str(out), "--quiet").returncode == 0


def test_two_runs_started_together_give_one_dataset(small_tree, tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "etl", "convert", str(small_tree / "train"), str(out), "--val-pct", "10",
           "--workers", "1", "--quiet"]
    runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 2], [0, 0]), results  # [0, 0] only if one ended before the other began
    report = json.loads((out / "report.json").read_text())
    lines = (out / "train.txt").read_text().splitlines()
    assert len(lines) == report["splits"]["train"]["written"] == len(all_records(out / "train_db"))
    assert run_cli("verify", str(out), "--quiet").returncode == 0


@pytest.mark.quick
def test_a_run_that_stopped_before_its_first_word_leaves_no_dataset_behind(tmp_path):
    out = tmp_path / "o"
    (out / ".etl").mkdir(parents=True)
    (out / ".etl" / "lock").write_text("1\n")
    (tmp_path / "t" / "a").mkdir(parents=True)
    proc = run_cli("convert", str(tmp_path / "t"), str(out), "--resume")
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr


def small_jpeg() -> bytes:
    from .conftest import gradient, jpeg

    return jpeg(gradient(40, 30))


def tree_of(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_a_line_break_in_a_class_name_is_refused_before_any_work(tmp_path):
    train = tree_of(tmp_path / "t", {"a/1.jpg": small_jpeg(), "b\nc/1.jpg": small_jpeg(), "d/1.jpg": small_jpeg()})
    proc = run_cli("convert", str(train), str(tmp_path / "o"), "--val-pct", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"etl: error: the class folder 'b\\nc' in {train} has a line break in its name, "
                                   "which labels.txt cannot hold: rename it")
    assert not (tmp_path / "o").exists()


def test_a_line_break_in_a_file_name_skips_that_file_with_the_reason(tmp_path):
    train = tree_of(tmp_path / "t", {"a/1.jpg": small_jpeg(), "a/2\r.jpg": small_jpeg(), "b/1.jpg": small_jpeg()})
    out = tmp_path / "o"
    assert run_cli("convert", str(train), str(out), "--val-pct", "0", "--workers", "1", "--quiet").returncode == 0
    report = json.loads((out / "report.json").read_text())["splits"]["train"]
    assert report["written"] == 2 and [f["path"] for f in report["skipped_files"]] == ["a/2\r.jpg"]
    assert "line break" in report["skipped_files"][0]["reason"]
    assert len((out / "train.txt").read_text().splitlines()) == 2
    assert run_cli("verify", str(out), "--quiet").returncode == 0


def without_dac(*cmd: str) -> list[str]:
    """Run as root without the capabilities that let root read any folder, as an ordinary user is."""
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="drops root's DAC capabilities with setpriv; as a "
                                "plain user, chmod alone makes the folder unreadable and the other tests cover it")


@needs_root
@pytest.mark.parametrize("where", ["b", "b/sub", "."])
def test_a_folder_that_cannot_be_listed_stops_the_run_before_any_work(tmp_path, where):
    train = tree_of(tmp_path / "t", {"a/1.jpg": small_jpeg(), "b/sub/1.jpg": small_jpeg(), "b/2.jpg": small_jpeg(),
                                     "c/1.jpg": small_jpeg()})
    (train / where).chmod(0)
    try:
        proc = subprocess.run(without_dac(sys.executable, "-m", "etl", "convert", str(train), str(tmp_path / "o"),
                                          "--val-pct", "0", "--workers", "1"),
                              capture_output=True, text=True, timeout=120)
    finally:
        (train / where).chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    folder = os.path.normpath(train / where)
    assert proc.stderr.strip() == (f"etl: error: cannot list the folder {folder}: Permission denied: make it "
                                   "readable, or move it out of the input")
    assert "Traceback" not in proc.stderr and not (tmp_path / "o" / "labels.txt").exists()


def test_a_fifo_named_like_an_image_is_skipped_at_once(tmp_path):
    train = tree_of(tmp_path / "t", {"a/1.jpg": small_jpeg(), "b/1.jpg": small_jpeg()})
    os.mkfifo(train / "a" / "pipe.JPEG")
    out = tmp_path / "o"
    proc = run_cli("convert", str(train), str(out), "--val-pct", "0", "--workers", "1", "--quiet",
                   "--image-timeout", "30")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())["splits"]["train"]
    assert report["skipped_files"] == [{"path": "a/pipe.JPEG", "reason": "cannot read: not a regular file (a FIFO)"}]
    assert report["workers_replaced"] == []  # no worker hung on it


@pytest.mark.parametrize(("args", "message"), [
    (["{t}", "{t}/zout"], "output folder {t}/zout is inside the input folder {t}: choose one outside it"),
    (["{t}", "{o}", "--val-dir", "{v}", ], None),
    (["{t}", "{v}/out", "--val-dir", "{v}"], "output folder {v}/out is inside the input folder {v}: choose one "
                                             "outside it"),
    (["{t}", "{o}", "--val-dir", "{t}"], "--val {t} is the train folder: give a separate folder, or --val-pct "
                                         "to hold out part of each class"),
    (["{t}", "{o}", "--val-dir", "{t}/a"], "--val {t}/a is inside the train folder: give a separate folder, or "
                                           "--val-pct to hold out part of each class"),
])
def test_output_inside_an_input_and_val_inside_train_are_refused(tmp_path, args, message):
    t = tree_of(tmp_path / "t", {"a/1.jpg": small_jpeg()})
    v = tree_of(tmp_path / "v", {"a/1.jpg": small_jpeg()})
    fill = {"t": t, "v": v, "o": tmp_path / "o"}
    proc = run_cli("convert", *[a.format(**fill) for a in args], "--workers", "1", "--quiet")
    if message is None:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 2 and proc.stderr.strip() == "etl: error: " + message.format(**fill)
        assert not (tmp_path / "t" / "zout").exists()


def test_a_class_name_that_is_not_utf8_converts_reports_resumes_and_verifies(tmp_path):
    train = tmp_path / "t"
    for name in (b"caf\xe9", b"plain"):
        folder = os.path.join(os.fsencode(train), name)
        os.makedirs(folder)
        with open(os.path.join(folder, b"1.jpg"), "wb") as fh:
            fh.write(small_jpeg())
    out = tmp_path / "o"
    args = ("convert", str(train), str(out), "--val-pct", "0", "--workers", "1")
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "report.json").read_bytes().decode("utf-8"))  # valid UTF-8 JSON
    assert os.fsencode(next(iter(report["splits"]["train"]["per_class"]))) == b"caf\xe9"
    assert (out / "labels.txt").read_bytes() == b"caf\xe9\nplain\n"  # the name's own bytes, as DIGITS reads them
    assert run_cli(*args, "--resume").returncode == 0
    assert run_cli("verify", str(out), "--quiet").returncode == 0


def test_a_database_cut_short_before_its_first_commit_is_made_again_on_resume(small_tree, tmp_path):
    out = tmp_path / "o"
    args = ("convert", str(small_tree / "train"), str(out), "--val-pct", "20", "--workers", "1", "--quiet")
    assert run_cli(*args).returncode == 0
    whole = all_records(out / "val_db")
    for name in ("val.state.json", "val.pending.json"):  # as when the disk filled while val_db was created
        (out / ".etl" / name).unlink(missing_ok=True)
    with open(out / "val_db" / "data.mdb", "r+b") as fh:
        fh.truncate(4096)
    proc = run_cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert all_records(out / "val_db") == whole
    assert run_cli("verify", str(out), "--quiet").returncode == 0


def test_a_damaged_database_says_so_and_what_to_do(small_tree, tmp_path):
    out = tmp_path / "o"
    args = ("convert", str(small_tree / "val"), str(out), "--val-pct", "0", "--workers", "1", "--quiet")
    assert run_cli(*args).returncode == 0
    data = out / "train_db" / "data.mdb"
    data.write_bytes(b"\0" * data.stat().st_size)
    proc = run_cli(*args, "--resume")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(f"etl: error: {out / 'train_db'} is damaged (")
    assert proc.stderr.strip().endswith("MDB_INVALID: File is not an LMDB file): convert again with --overwrite in "
                                        "place of --resume")
    assert run_cli(*args, "--overwrite").returncode == 0


@pytest.mark.parametrize("name", ["train.state.json", "job.json", "train.sum.1.npy"])
def test_a_damaged_checkpoint_file_is_named_with_advice_that_works(small_tree, tmp_path, name):
    out = tmp_path / "o"
    args = ("convert", str(small_tree / "val"), str(out), "--val-pct", "0", "--workers", "1", "--quiet")
    assert run_cli(*args).returncode == 0
    path = out / ".etl" / name
    assert path.exists(), sorted(p.name for p in (out / ".etl").iterdir())
    path.write_bytes(b"{not json")
    proc = run_cli(*args, "--resume")
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr
    assert f"the checkpoint file {path} is damaged" in proc.stderr
    assert proc.stderr.strip().endswith("convert again with --overwrite in place of --resume")
    assert run_cli(*args, "--overwrite").returncode == 0  # the advice, followed


def test_the_advice_after_on_error_fail_works_followed_literally(tmp_path):
    train = tree_of(tmp_path / "t", {f"a/{i}.jpg": small_jpeg() for i in range(6)})
    (train / "a" / "3.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "o"
    (out / "labels.txt").parent.mkdir()
    (out / "labels.txt").write_text("old\n")  # an old dataset: the command says --overwrite
    args = ["convert", str(train), str(out), "--val-pct", "0", "--workers", "1", "--chunk-size", "1",
            "--no-shuffle", "--on-error", "fail", "--quiet"]
    proc = run_cli(*args, "--overwrite")
    assert proc.returncode == 1
    said = proc.stderr.strip()
    assert said.endswith("fix or replace that file, then run the same command with --resume in place of "
                         "--overwrite (to leave it out instead, remove it and convert again with --overwrite)")
    (train / "a" / "3.jpg").write_bytes(small_jpeg())  # fixed; then, literally: --resume in place of --overwrite
    assert run_cli(*args, "--resume").returncode == 0
    assert json.loads((out / "report.json").read_text())["splits"]["train"]["written"] == 6


def test_removing_the_bad_file_then_converting_again_with_overwrite_works(tmp_path):
    train = tree_of(tmp_path / "t", {f"a/{i}.jpg": small_jpeg() for i in range(4)})
    (train / "a" / "2.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "o"
    args = ["convert", str(train), str(out), "--val-pct", "0", "--workers", "1", "--on-error", "fail", "--quiet"]
    assert run_cli(*args).returncode == 1
    (train / "a" / "2.jpg").unlink()
    assert run_cli(*args, "--overwrite").returncode == 0


def test_resume_takes_the_same_folders_however_they_are_spelled(small_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(small_tree)
    out = tmp_path / "o"
    common = ("--val-pct", "0", "--workers", "1", "--quiet", "--on-error", "fail")
    proc = subprocess.run([sys.executable, "-m", "etl", "convert", "val/", str(out), *common], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for spelled in ("val", "./val", str(small_tree / "val")):
        assert run_cli("convert", spelled, str(out), *common, "--resume", cwd=small_tree).returncode == 0


def test_images_that_links_put_under_two_labels_are_named_in_the_summary(tmp_path):
    train = tree_of(tmp_path / "t", {"a/1.jpg": small_jpeg(), "a/2.jpg": small_jpeg(), "c/1.jpg": small_jpeg()})
    os.symlink(train / "a", train / "b")  # two links to one folder: two classes with the same images
    os.symlink(train / "a" / "2.jpg", train / "c" / "2.jpg")  # a file linked from another class
    out = tmp_path / "o"
    proc = run_cli("convert", str(train), str(out), "--val-pct", "0", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert notes == ["class 'b' holds the folder b, which class 'a' holds too: its images are under both labels",
                     "1 image under two labels through file links, e.g. c/2.jpg (class 'c') is an image of "
                     "class 'a'"]
    assert all(f"note: {n}" in proc.stdout for n in notes)


def test_the_smaller_plan_messages_say_what_is_true(tmp_path):
    train = tree_of(tmp_path / "t", {"a/1.jpg": small_jpeg(), "a/2.jpg": small_jpeg(), "b/1.jpg": small_jpeg()})
    val = tree_of(tmp_path / "v", {"a/1.jpg": small_jpeg(), "b/1.jpg": small_jpeg()})
    flat = tree_of(tmp_path / "flat", {"1.jpg": small_jpeg()})
    out = str(tmp_path / "o")
    cases = [
        (["convert", str(train / "a" / "1.jpg"), out], f"train folder {train / 'a' / '1.jpg'} is not a folder, a tar "
                                                       "archive nor a list file: give the folder that holds one "
                                                       "sub-folder per class, a tar of class tars or class folders, "
                                                       "or a file of 'path label' lines"),
        (["convert", str(train), out, "--min-per-class", "5"], "every class has fewer than --min-per-class 5 images "
                                                               "(the largest has 2): lower --min-per-class"),
        (["convert", str(train), out, "--val-dir", str(flat)], f"no images found in class sub-folders of the val "
                                                               f"folder {flat}: it needs one sub-folder per class, "
                                                               "named as in the train folder, or --val-labels naming "
                                                               "each image's class"),
    ]
    for args, message in cases:
        proc = run_cli(*args)
        assert (proc.returncode, proc.stderr.strip()) == (2, f"etl: error: {message}")
    proc = run_cli("convert", str(train), out, "--val-dir", str(val), "--min-per-class", "2", "--workers", "1")
    assert proc.returncode == 0, proc.stderr  # b is dropped: its val images are left out, not "lacking in train"
    assert "note: val images of 1 dropped class left out, e.g. 'b'" in proc.stdout
