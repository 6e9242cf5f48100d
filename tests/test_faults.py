"""Never lose, never hang: bad files, dying and hanging workers, signals, SIGKILL + resume, disk full."""

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from etl.synth import TreeSpec, bad_files, make_tree

from .test_end_to_end import all_records


def etl(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300, env={**os.environ, **(env or {})}, **kw)


def _ctrl_c_as_a_terminal_gives_it() -> None:
    # A shell that starts the suite in the background (`make test &`) makes it ignore SIGINT, and the
    # children inherit that; etl's coordinator must get Ctrl-C as a user's terminal delivers it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "etl", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True,
                            preexec_fn=_ctrl_c_as_a_terminal_gives_it)


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def dataset(out: Path) -> dict:
    """Everything a consumer reads, to compare two runs; each checksum sidecar must match its database."""
    found = {split: all_records(out / f"{split}_db") for split in ("train", "val") if (out / f"{split}_db").exists()}
    for split in ("train", "val"):
        if split in found:
            assert sidecar(out, split) == [b"%s %08x" % (k, zlib.crc32(v)) for k, v in found[split]], split
            found[f"{split}_db.sums"] = (out / f"{split}_db.sums").read_bytes()
    for name in ("train.txt", "val.txt", "labels.txt", "mean.binaryproto", "mean.jpg"):
        found[name] = (out / name).read_bytes()
    return found


def sidecar(out: Path, split: str) -> list[bytes]:
    return (out / f"{split}_db.sums").read_bytes().splitlines()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    make_tree(root / "train", TreeSpec(classes=3, per_class=14, seed=21, awkward=False))
    return root / "train"


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory):
    """An uninterrupted run to compare interrupted and resumed ones against."""
    out = tmp_path_factory.mktemp("ref") / "out"
    proc = etl("convert", tree, out, "--val-pct", "20", "--chunk-size", "2", "--commit-every", "4", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return dataset(out)


ARGS = ("--val-pct", "20", "--chunk-size", "2", "--commit-every", "4", "--quiet")


# ---- bad input --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def messy_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy") / "train"
    make_tree(root, TreeSpec(classes=2, per_class=6, seed=5))  # awkward-but-valid kinds included
    bad = bad_files(np.random.default_rng(3))
    for name, (data, _) in bad.items():
        (root / "n00000001" / name).write_bytes(data)
    os.symlink(root / "nowhere.jpg", root / "n00000001" / "dangling.jpg")
    return root, bad


def test_bad_files_are_skipped_with_reasons_and_good_ones_written(messy_tree, tmp_path):
    root, bad = messy_tree
    out = tmp_path / "out"
    proc = etl("convert", root, out, "--val-pct", "0", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    r = report(out)["splits"]["train"]
    skipped = {Path(f["path"]).name: f["reason"] for f in r["skipped_files"]}
    must_skip = {n for n, (_, outcome) in bad.items() if outcome is None} | {"dangling.jpg"}
    assert set(skipped) == must_skip
    assert "dangling symlink" in skipped["dangling.jpg"]
    assert "over the limit" in skipped["claims_60000x60000.JPEG"]
    assert "HTML" in skipped["error_page.JPEG"] and "empty file" in skipped["zero.JPEG"]
    assert "no image data" in skipped["header_only.JPEG"]
    warned = {Path(f["path"]).name for f in r["warning_files"]}
    assert warned == {"truncated.JPEG", "junk_bytes.JPEG"}
    every_file = [p for p in root.rglob("*") if p.is_file() or p.is_symlink()]
    assert r["written"] == len(every_file) - len(must_skip) == len(all_records(out / "train_db"))
    assert "skipped" in proc.stdout and "e.g." in proc.stdout  # the summary shows reasons
    written = (out / "train.txt").read_text(encoding="utf-8")
    assert "ycck.JPEG" in written and "very wide ünïcode.jpg" in written and "cmyk.JPEG" in written
    assert etl("verify", out, "--quiet").returncode == 0


def test_strict_rejects_images_decoded_with_warnings(messy_tree, tmp_path):
    root, _ = messy_tree
    proc = etl("convert", root, tmp_path / "out", "--val-pct", "0", "--strict", "--quiet")
    assert proc.returncode == 0, proc.stderr
    r = report(tmp_path / "out")["splits"]["train"]
    skipped = {Path(f["path"]).name: f["reason"] for f in r["skipped_files"]}
    assert "--strict" in skipped["truncated.JPEG"] and "--strict" in skipped["junk_bytes.JPEG"]
    assert r["warning_files"] == []


def test_images_refused_by_strict_stay_out_of_the_mean(tmp_path):
    """Eight black images and one white one that decodes only with a warning: under --strict the mean
    is black (it once counted the refused image in the sum but not in the count)."""
    root = tmp_path / "train" / "n0"
    root.mkdir(parents=True)
    for i in range(8):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, "JPEG", quality=90)
        (root / f"black{i}.JPEG").write_bytes(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(np.full((256, 256, 3), 255, np.uint8)).save(buf, "JPEG", quality=90)
    (root / "white_truncated.JPEG").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    out = tmp_path / "out"
    proc = etl("convert", tmp_path / "train", out, "--val-pct", "0", "--strict", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert report(out)["splits"]["train"]["written"] == 8
    assert np.asarray(Image.open(out / "mean.jpg")).max() <= 2


def test_on_error_fail_stops_at_the_first_bad_file(messy_tree, tmp_path):
    root, _ = messy_tree
    proc = etl("convert", root, tmp_path / "out", "--val-pct", "0", "--on-error", "fail", "--quiet")
    assert proc.returncode == 1
    assert "stopped at the first bad file" in proc.stderr and "Traceback" not in proc.stderr
    assert "n00000001" in proc.stderr  # names the file and its reason


def test_on_error_fail_then_fix_then_resume_writes_everything(tree, tmp_path):
    """The chunk holding the bad file is not committed, so once the file is fixed, --resume writes it;
    left unfixed, --resume stops on it again (it was committed as skipped, before)."""
    root = tmp_path / "t"
    shutil.copytree(tree, root)
    good = tmp_path / "good"
    assert etl("convert", root, good, "--val-pct", "0", "--chunk-size", "4", "--quiet").returncode == 0
    order = [line.rsplit(" ", 1)[0] for line in (good / "train.txt").read_text().splitlines()]
    victim = root / order[-1]  # the very last one written: the case that used to slip through
    original = victim.read_bytes()
    victim.write_bytes(b"not an image")
    out, args = tmp_path / "out", ("--val-pct", "0", "--chunk-size", "4", "--on-error", "fail", "--quiet")
    first = etl("convert", root, out, *args)
    assert first.returncode == 1 and "stopped at the first bad file" in first.stderr
    assert len(all_records(out / "train_db")) < len(order) - 1  # its whole chunk is left out
    again = etl("convert", root, out, *args, "--resume")
    assert again.returncode == 1 and victim.name in again.stderr
    victim.write_bytes(original)
    fixed = etl("convert", root, out, *args, "--resume")
    assert fixed.returncode == 0, fixed.stderr
    assert dataset(out) == dataset(good)


def test_workers_that_die_before_doing_anything_stop_the_run_with_a_reason(tree, tmp_path):
    """Before, such workers were replaced for ever (thousands a second) and the run never ended."""
    proc = etl("convert", tree, tmp_path / "out", "--val-pct", "0", "--workers", "2",
               env={"ETL_TEST_FAULTS": "exit=<startup>"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "workers keep stopping before they convert anything" in proc.stderr
    assert "exited with code 3" in proc.stderr


def test_unreadable_and_vanishing_files(tree, tmp_path):
    root = tmp_path / "t"
    shutil.copytree(tree, root)
    victims = sorted(root.rglob("*.JPEG"))
    (victims[0]).chmod(0)
    env = {"ETL_TEST_FAULTS": f"vanish={victims[1].name}"}
    proc = etl("convert", root, tmp_path / "out", "--val-pct", "0", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    skipped = {Path(f["path"]).name: f["reason"] for f in report(tmp_path / "out")["splits"]["train"]["skipped_files"]}
    assert skipped[victims[1].name] == "cannot read: file vanished since the scan"
    if os.geteuid() == 0:  # root reads mode-000 files: that part of the check needs another user
        assert victims[0].name not in skipped
    else:
        assert skipped[victims[0].name] == "cannot read: permission denied"


# ---- dying and hanging workers ----------------------------------------------------------------------

@pytest.mark.parametrize("action", ["crash", "exit"])
def test_worker_that_dies_once_is_replaced_and_its_image_retried(tree, tmp_path, reference, action):
    victim = sorted(tree.rglob("*.JPEG"))[5].name
    env = {"ETL_TEST_FAULTS": f"{action}_once={victim}", "ETL_TEST_FAULT_DIR": str(tmp_path)}
    proc = etl("convert", tree, tmp_path / "out", *ARGS, env=env)
    assert proc.returncode == 0, proc.stderr
    r = report(tmp_path / "out")["splits"]
    assert sum(len(s["workers_replaced"]) for s in r.values()) == 1
    assert all(s["skipped"] == 0 for s in r.values())
    assert dataset(tmp_path / "out") == reference  # nothing lost, nothing twice


def test_worker_that_always_dies_costs_only_that_image(tree, tmp_path):
    victim = sorted(tree.rglob("*.JPEG"))[7].name
    proc = etl("convert", tree, tmp_path / "out", *ARGS, env={"ETL_TEST_FAULTS": f"crash={victim}"})
    assert proc.returncode == 0, proc.stderr
    splits = report(tmp_path / "out")["splits"]
    skipped = [f for s in splits.values() for f in s["skipped_files"]]
    assert [Path(f["path"]).name for f in skipped] == [victim]
    assert "failed twice" in skipped[0]["reason"] and "SIGSEGV" in skipped[0]["reason"]
    assert sum(s["written"] for s in splits.values()) == len(list(tree.rglob("*.JPEG"))) - 1


def test_hung_worker_is_killed_after_the_image_timeout(tree, tmp_path):
    victim = sorted(tree.rglob("*.JPEG"))[3].name
    t0 = time.monotonic()
    proc = etl("convert", tree, tmp_path / "out", *ARGS, "--image-timeout", "1",
               env={"ETL_TEST_FAULTS": f"hang={victim}"})
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 60
    skipped = [f for s in report(tmp_path / "out")["splits"].values() for f in s["skipped_files"]]
    assert [Path(f["path"]).name for f in skipped] == [victim] and "--image-timeout" in skipped[0]["reason"]


def test_worker_killed_from_outside_is_replaced(tree, tmp_path, reference):
    victim = sorted(tree.rglob("*.JPEG"))[2].name
    env = {"ETL_TEST_FAULTS": f"hang_once={victim}", "ETL_TEST_FAULT_DIR": str(tmp_path)}
    proc = start("convert", tree, tmp_path / "out", *ARGS, env=env)
    marker = tmp_path / f"{victim}.fired"
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(_idle_worker(proc.pid), signal.SIGKILL)  # as the OOM killer would
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert dataset(tmp_path / "out") == reference


def workers_of(pid: int) -> list[psutil.Process]:
    """The worker processes of a run (forked, or from a forkserver): not the writer, which holds the
    LMDB open, nor multiprocessing's forkserver and resource tracker."""
    return [c for c in psutil.Process(pid).children(recursive=True)
            if not any(f.path.endswith("data.mdb") for f in c.open_files())
            and not any(name in " ".join(c.cmdline()) for name in ("forkserver import main", "resource_tracker"))]


def _idle_worker(pid: int) -> int:
    """The worker stuck on one image: the one that used the least CPU in half a second."""
    children = workers_of(pid)
    before = {c.pid: sum(c.cpu_times()[:2]) for c in children}
    time.sleep(0.5)
    return min(children, key=lambda c: sum(c.cpu_times()[:2]) - before[c.pid]).pid


# ---- signals, SIGKILL, resume -----------------------------------------------------------------------

def consistent(out: Path) -> int:
    """The database opens, its keys run 0..n-1 without a gap, and the list file matches it."""
    pairs = all_records(out / "train_db")
    assert [k.split(b"_")[0] for k, _ in pairs] == [b"%08d" % i for i in range(len(pairs))]
    assert len((out / "train.txt").read_text(encoding="utf-8").splitlines()) >= len(pairs)
    return len(pairs)


def start_stalled(tree: Path, out: Path) -> subprocess.Popen:
    """A run that hangs on one image (its worker never returns), after it has committed some work."""
    victim = sorted(tree.rglob("*.JPEG"))[-1].name
    proc = start("convert", tree, out, *ARGS, env={"ETL_TEST_FAULTS": f"hang={victim}"})
    deadline = time.monotonic() + 60
    while not (out / ".etl" / "train.state.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    return proc


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_signal_stops_quickly_commits_and_resumes(tree, tmp_path, reference, how):
    out = tmp_path / "out"
    proc = start_stalled(tree, out)
    t0 = time.monotonic()
    if how == "SIGINT":
        proc.send_signal(signal.SIGINT)  # Ctrl-C reaches the coordinator
    else:
        os.killpg(proc.pid, signal.SIGTERM)  # the whole process group, as a service manager does
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 10
    assert proc.returncode in (130, 143) and proc.returncode != 0
    assert "--resume" in err and "Traceback" not in err
    assert consistent(out) > 0
    resumed = etl("convert", tree, out, *ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert dataset(out) == reference
    assert report(out)["resumed"] is True


def test_resuming_a_run_started_without_checksums_sums_what_it_had_committed(tree, tmp_path, reference):
    out = tmp_path / "out"
    proc = start_stalled(tree, out)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert consistent(out) > 0
    (out / "train_db.sums").unlink()  # as etl 0.3.0, which wrote none, would have left it
    job = out / ".etl" / "job.json"
    job.write_text(json.dumps({**json.loads(job.read_text()), "etl_version": "0.3.0"}))
    resumed = etl("convert", tree, out, *ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert dataset(out) == reference


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_moment_then_resume_is_identical(tree, tmp_path, reference, seed):
    out = tmp_path / "out"
    proc = start("convert", tree, out, *ARGS)
    deadline = time.monotonic() + 60
    while not (out / ".etl" / "job.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 1.2))
    os.killpg(proc.pid, signal.SIGKILL)  # power-loss-like: nobody gets to clean up
    proc.wait(timeout=30)
    resumed = etl("convert", tree, out, *ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert dataset(out) == reference  # no image missing, none written twice, same bytes
    assert etl("verify", out, "--quiet").returncode == 0


def test_resume_refuses_other_settings_or_input(tree, tmp_path):
    out = tmp_path / "out"
    assert etl("convert", tree, out, *ARGS).returncode == 0
    proc = etl("convert", tree, out, *ARGS, "--resume", "--quality", "80")
    assert proc.returncode == 2 and "quality was 90, now 80" in proc.stderr
    changed = tmp_path / "changed"
    shutil.copytree(tree, changed)
    next(changed.rglob("*.JPEG")).unlink()
    proc = etl("convert", changed, out, *ARGS, "--resume")
    assert proc.returncode == 2 and "train_dir" in proc.stderr  # a different folder is a different job
    proc = etl("convert", tree, tmp_path / "empty", *ARGS, "--resume")
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr
    job_file = out / ".etl" / "job.json"
    job = json.loads(job_file.read_text())
    job_file.write_text(json.dumps({**job, "etl_version": "99.0.0"}))  # started by a later etl
    proc = etl("convert", tree, out, *ARGS, "--resume")
    assert proc.returncode == 2 and "started by etl 99.0.0, newer than this etl" in proc.stderr
    job_file.write_text(json.dumps({k: v for k, v in job.items() if k != "etl_version"}))  # by etl 0.2
    assert etl("convert", tree, out, *ARGS, "--resume").returncode == 0


def test_resume_notices_changed_files_in_the_same_folder(tree, tmp_path):
    root = tmp_path / "t"
    shutil.copytree(tree, root)
    out = tmp_path / "out"
    assert etl("convert", root, out, *ARGS).returncode == 0
    next(root.rglob("*.JPEG")).unlink()
    proc = etl("convert", root, out, *ARGS, "--resume")
    assert proc.returncode == 2 and "differ from the first run" in proc.stderr


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_disk_full_stops_cleanly_and_resumes_after_space_is_freed(tree, tmp_path, reference):
    small = tmp_path / "small"
    # The whole dataset takes ~1 MB: ~430 KB of train records, the mean's sum (~300 KB, twice while it
    # is replaced) and the rest; 800 KB runs out part way through the train split.
    if os.geteuid() != 0 or not _mount_tmpfs(small, "800k"):
        pytest.skip("needs root and permission to mount a size-limited tmpfs to simulate a full disk")
    try:
        out = small / "out"
        proc = etl("convert", tree, out, *ARGS)
        assert proc.returncode == 1, proc.stderr
        assert "disk is full" in proc.stderr and "--resume" in proc.stderr and "Traceback" not in proc.stderr
        consistent(out)
        assert 0 < len(all_records(out / "train_db")) < len(reference["train"])  # stopped part way
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)  # space freed
        resumed = etl("convert", tree, out, *ARGS, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert dataset(out) == reference
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


# ---- found in review --------------------------------------------------------------------------------

def test_tasks_bigger_than_a_pipe_buffer_do_not_deadlock(tmp_path):
    tiny = tiny_jpeg()
    folder = tmp_path / "t" / ("c" * 60)
    folder.mkdir(parents=True)
    for i in range(4300):  # two chunks of 4096 items with long names: ~600 KB per pickled task
        (folder / f"{'x' * 80}_{i:05d}.jpg").write_bytes(tiny)
    proc = etl("convert", tmp_path / "t", tmp_path / "out", "--workers", "1", "--chunk-size", "4096",
               "--val-pct", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert report(tmp_path / "out")["splits"]["train"]["written"] == 4300


def tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def test_throttled_reads_are_not_taken_for_hangs(small_tree, tmp_path):
    proc = etl("convert", small_tree / "val", tmp_path / "out", "--val-pct", "0", "--quiet", "--workers", "2",
               "--max-read-mbps", "0.3", "--image-timeout", "1")
    assert proc.returncode == 0, proc.stderr
    r = report(tmp_path / "out")["splits"]["train"]
    assert r["skipped"] == 0 and r["workers_replaced"] == [] and r["io"]["workers_throttled_seconds"] > 1


def test_killed_coordinator_leaves_no_process_behind_and_resumes(tree, tmp_path, reference):
    out = tmp_path / "out"
    proc = start_stalled(tree, out)
    children = psutil.Process(proc.pid).children(recursive=True)  # workers and writer (+ forkserver, tracker)
    assert len(children) >= 3
    os.kill(proc.pid, signal.SIGKILL)  # the OOM killer picks the coordinator alone
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], "writer or workers outlived the coordinator"
    assert consistent(out) > 0
    resumed = etl("convert", tree, out, *ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert dataset(out) == reference
