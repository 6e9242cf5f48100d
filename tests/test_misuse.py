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
