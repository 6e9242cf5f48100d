"""--runner ray: shards as Ray tasks give the local run's shards and files; a task that dies is run again; --resume
redoes only the shards not done; a shard that fails for good ends the run naming it; misuse is one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from etl.check import verify
from etl.cli import main
from etl.errors import UsageError
from etl.pipeline import convert
from etl.runners import make_runner
from etl.runners.ray import fault_name
from etl.settings import build_settings

from .test_end_to_end import all_records

SIDE_FILES = ("labels.txt", "train.txt", "val.txt", "mean.binaryproto", "mean.jpg")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module (the runner uses it rather than start its own): ~5 s to start."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # a new one, whatever `ray start` runs here
    yield
    ray.shutdown()


# the misuse checks first: the Ray tests after them leave Ray printing its tasks' logs into stderr for a while
@pytest.mark.parametrize(("argv", "words"), [
    (["--runner", "ray"], "--shard-size"),
    (["--shard-size", "10", "--scratch", "/tmp"], "--runner ray"),
    (["--shard-size", "10", "--ray-address", "auto"], "--runner ray"),
    (["--shard-size", "10", "--cpus-per-shard", "2"], "--runner ray"),
])
def test_misuse_is_one_line(small_tree, tmp_path, capsys, argv, words):
    assert main(["convert", str(small_tree / "train"), str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "o").exists()


def test_without_ray_installed_it_says_what_to_install(small_tree, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as it does where Ray is not installed
    monkeypatch.delitem(sys.modules, "etl.runners.ray", raising=False)
    s = build_settings({"train_dir": str(small_tree / "train"), "out_dir": str(tmp_path / "o"), "runner": "ray",
                        "shard_size": 10})
    with pytest.raises(UsageError, match=r"pip install 'etl\[ray\]'"):
        make_runner(s)


def shard_dirs(out: Path, split: str = "train") -> list[Path]:
    return sorted(p for p in (out / f"{split}_db").iterdir() if p.is_dir())


def shard_records(out: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    return {f"{split}/{d.name}": all_records(d) for split in ("train", "val") for d in shard_dirs(out, split)}


def manifest(out: Path, split: str = "train") -> dict:
    m = json.loads((out / f"{split}_db" / "manifest.json").read_text())
    for shard in m["shards"]:
        shard.pop("wall_seconds")
    return m


@pytest.fixture(scope="module")
def job(small_tree, tmp_path_factory):
    """A tree with bad files among its images (skips), and its local --shard-size run to compare with."""
    base = tmp_path_factory.mktemp("ray")
    tree = shutil.copytree(small_tree / "train", base / "tree")
    for n, cls in enumerate(sorted(p for p in tree.iterdir() if p.is_dir())):
        (cls / f"{cls.name}_bad{n}.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    common = {"train_dir": str(tree), "val_pct": 25.0, "chunk_size": 4, "shard_size": 10}
    local = convert(build_settings({**common, "out_dir": str(base / "local"), "workers": 2}), progress=False)
    return base, common, local


def driver_stuck_at(victim: str, train: str, out: Path, fault_dir: Path, stderr: int) -> subprocess.Popen:
    """A Ray driver in its own session whose shard task hangs once at the image `victim`."""
    argv = [sys.executable, "-m", "etl", "convert", train, str(out), "--val-pct", "25", "--chunk-size", "4",
            "--shard-size", "10", "--runner", "ray", "--cpus-per-shard", "1", "--quiet"]
    env = {**os.environ, "ETL_TEST_FAULTS": f"hang_once={victim}", "ETL_TEST_FAULT_DIR": str(fault_dir)}
    return subprocess.Popen(argv, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr, cwd=Path(__file__).parent.parent)


def wait_until_stuck(victim: str, fault_dir: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (fault_dir / f"{victim}.fired").exists():
        time.sleep(0.2)
    assert (fault_dir / f"{victim}.fired").exists(), "the stuck image was never reached"


def assert_same_as_local(base: Path, out: Path) -> None:
    assert shard_records(out) == shard_records(base / "local")
    for name in SIDE_FILES:
        assert (out / name).read_bytes() == (base / "local" / name).read_bytes(), name
    for split in ("train", "val"):
        assert manifest(out, split) == manifest(base / "local", split)
    assert not verify(str(out), progress=False).problems


def test_ray_shards_are_the_local_runs_shards(cluster, job, capsys):
    base, common, local = job
    report = convert(build_settings({**common, "out_dir": str(base / "ray"), "runner": "ray"}), progress=True)
    shown = capsys.readouterr()
    assert "train shards by node: " in shown.out and "img/s" in shown.err  # the summary; the bar (with its tally)
    assert len(shard_dirs(base / "ray")) > 2
    assert_same_as_local(base, base / "ray")
    assert local["splits"]["train"]["skipped"] > 0
    for key in ("written", "skipped", "per_class"):
        assert report["splits"]["train"][key] == local["splits"]["train"][key]
    assert all(s["node"] for s in report["splits"]["train"]["shards"])  # where each ran
    for d in shard_dirs(base / "ray"):
        assert (d / ".etl" / "done.json").is_file() and not (d / "lock.mdb").exists()
    assert not list((base / "ray" / "train_db").glob("*.tmp"))


def test_a_task_that_dies_is_run_again_to_the_same_output(cluster, job, tmp_path, monkeypatch):
    base, common, _ = job
    victim = shard_dirs(base / "local")[1].name
    monkeypatch.setenv("ETL_TEST_FAULTS", f"exit_once={fault_name('train', victim)}")  # os._exit mid-copy
    monkeypatch.setenv("ETL_TEST_FAULT_DIR", str(tmp_path))
    convert(build_settings({**common, "out_dir": str(tmp_path / "out"), "runner": "ray", "cpus_per_shard": 1,
                            "scratch": str(tmp_path / "scratch")}), progress=False)
    assert (tmp_path / f"{fault_name('train', victim)}.fired").exists()  # the first attempt died
    assert_same_as_local(base, tmp_path / "out")
    assert not [p for p in (tmp_path / "scratch").rglob("*") if p.is_file()]  # each shard's scratch is removed


def test_resume_redoes_only_the_shard_whose_marker_is_gone(cluster, job, tmp_path):
    base, common, _ = job
    out = shutil.copytree(base / "ray", tmp_path / "out")
    dirs = shard_dirs(out)
    before = {d.name: os.stat(d / "data.mdb").st_mtime_ns for d in dirs}
    (dirs[1] / ".etl" / "done.json").unlink()
    report = convert(build_settings({**common, "out_dir": str(out), "runner": "ray", "resume": True,
                                     "cpus_per_shard": 1}), progress=False)
    after = {d.name: os.stat(d / "data.mdb").st_mtime_ns for d in shard_dirs(out)}
    assert [n for n in before if before[n] != after[n]] == [dirs[1].name]
    assert_same_as_local(base, out)
    train = report["splits"]["train"]
    assert train["resumed_from"] == train["written"] - train["shards"][1]["records"]


def test_a_shard_that_fails_for_good_ends_the_run_naming_it(cluster, job, tmp_path, capsys):
    base, common, _ = job
    blocked = tmp_path / "scratch"
    blocked.write_text("a file where the scratch folder should be")  # every attempt of every shard fails
    out = tmp_path / "out"
    code = main(["convert", common["train_dir"], str(out), "--val-pct", "25", "--chunk-size", "4", "--shard-size",
                 "10", "--runner", "ray", "--scratch", str(blocked), "--quiet"])
    assert code == 1
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("etl: error:")]
    assert len(line) == 1
    assert "train shard 0000" in line[0] and "NotADirectoryError" in line[0] and "--resume" in line[0], line
    assert not (out / "train_db" / "manifest.json").exists() and not (out / "report.json").exists()


def test_a_killed_driver_then_resume_gives_the_same_output(cluster, job, tmp_path):
    """The driver and the Ray it started are killed (SIGKILL to the whole session, as a crashed head node) while
    the last train shard is stuck on an image; the same command with --resume finishes the job."""
    base, common, _ = job
    last = shard_dirs(base / "local")[-1]
    everywhere = [Path(line.rsplit(" ", 1)[0]).name for line in (base / "local" / "train.txt").read_text().splitlines()]
    victim = next(name for name in (Path(line.rsplit(" ", 1)[0]).name
                                    for line in (last / ".etl" / "train.txt").read_text().splitlines())
                  if everywhere.count(name) == 1)
    out = tmp_path / "out"
    proc = driver_stuck_at(victim, common["train_dir"], out, tmp_path, stderr=subprocess.DEVNULL)
    try:
        wait_until_stuck(victim, tmp_path)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "train_db" / last.name / ".etl" / "done.json").exists()
    convert(build_settings({**common, "out_dir": str(out), "runner": "ray", "resume": True, "cpus_per_shard": 1}),
            progress=False)
    assert_same_as_local(base, out)


def test_a_driver_killed_alone_leaves_no_ray_process_and_ray_prints_nothing_of_its_own(job, tmp_path):
    """SIGKILL to the driver only (the OOM killer's choice): the Ray it started goes too, agents included; and
    Ray's own log lines (its start, its warnings) never reach the user's terminal before etl's."""
    import psutil

    base, common, _ = job
    victim = Path((base / "local" / "train.txt").read_text().splitlines()[-1].rsplit(" ", 1)[0]).name
    proc = driver_stuck_at(victim, common["train_dir"], tmp_path / "out", tmp_path, stderr=subprocess.PIPE)
    try:
        wait_until_stuck(victim, tmp_path)
        started = [p for p in psutil.Process(proc.pid).children(recursive=True) if "raywatch" not in " ".join(
            p.cmdline())]
        assert any(p.name().startswith("ray::") for p in started)  # the agents and the task: Ray's own processes
    finally:
        proc.kill()  # the driver alone
        _, err = proc.communicate()
    _, alive = psutil.wait_procs(started, timeout=30)
    assert alive == [], ([p.name() for p in alive], err.decode())
    assert err.decode() == ""
