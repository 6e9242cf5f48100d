"""The benchmark harness runs end to end on a tiny corpus and its outputs are well formed (no speed is asserted)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from etl.bench import SweepPoint, recommend
from etl.errors import UsageError

from .conftest import run_cli


def test_bench_on_a_tiny_corpus(tmp_path):
    proc = run_cli("bench", "--generate", "40", "--workers", "2", "--list-counts", "200,1000",
                   "--ceiling-records", "640", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res["files"] == 40
    assert set(res["kernels"]) == {"Pillow BILINEAR (DIGITS)", "OpenCV INTER_LINEAR (Caffe)", "etl"}
    assert all(k["ms_per_image"] > 0 and 20 < k["psnr_db"] < 60 for k in res["kernels"].values())
    assert {"read", "header", "encode", "writer commit"} <= set(res["stages"])
    assert res["limit_images_per_second"] > 0
    e2e = res["end_to_end"]
    assert all(r["images"] == 40 for r in e2e.values())
    assert res["ceiling"]["records"] == 640 and res["ceiling"]["records_per_second"] > 0
    assert 0 < res["serial"]["serial_cpu_share"] < 1 and res["serial"]["bottleneck_cores"] > 0
    assert res["memory"]["listed"] == [200, 1000] and res["memory"]["bytes_per_listed_image"] > 0
    for text in ("x Pillow", "of the limit", "Serial ceiling", "bytes per listed image"):
        assert text in proc.stdout


def test_tune_sweeps_plots_and_recommends(tmp_path):
    proc = run_cli("tune", "--generate", "24", "--max-workers", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "tune.json").read_text())
    assert [(p["workers"], p["chunk_size"]) for p in res["points"]][:2] == [(1, 64), (2, 64)]
    assert {p["chunk_size"] for p in res["points"]} == {16, 64, 256}
    assert {p["queue_depth"] for p in res["points"]} == {1, 2, 4}
    assert {p["read_ahead"] for p in res["points"]} == {0, 2, 4, 8}
    assert res["page_cache"] == "warm" and "Recommended, measured warm" in proc.stdout
    assert all(p["images_per_second"] > 0 and p["peak_rss_mb"] > 0 for p in res["points"])
    assert 1 <= res["recommended"]["workers"] <= 2
    with Image.open(tmp_path / "sweep.png") as png:
        png.verify()  # a whole, valid PNG
        assert png.format == "PNG" and 600 <= png.size[0] <= 2000 and 400 <= png.size[1] <= 2000
    assert f"plot: {tmp_path / 'sweep.png'}" in proc.stdout
    assert f"workers = {res['recommended']['workers']}" in proc.stdout
    assert f"queue_depth = {res['recommended']['queue_depth']}" in proc.stdout
    assert "| queue depth |" in proc.stdout
    assert f"read_ahead = {res['recommended']['read_ahead']}" in proc.stdout


def _cold_or_skip(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode == 2 and "--cold: the corpus is still" in proc.stderr:  # TMPDIR on a tmpfs: nothing to evict
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr


def test_bench_cold_gives_cold_and_warm_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the corpus on the disk the test writes to
    proc = run_cli("bench", "--generate", "24", "--workers", "1", "--list-counts", "200,1000", "--cold",
                   "--rounds", "2", "--ceiling-records", "640", "--out", str(tmp_path / "out"))
    _cold_or_skip(proc)
    res = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert res["rounds"] == 2 and set(res["end_to_end_cold"]) == set(res["end_to_end"])
    for regime in ("end_to_end", "end_to_end_cold"):
        for run in res[regime].values():
            assert run["images"] == 24 and len(run["runs_images_per_second"]) == 2
            assert run["machine"]["user"] + run["machine"]["system"] > 0
    for text in ("| cold / warm |", "Where the machine's CPU time went", "median of 2 interleaved runs"):
        assert text in proc.stdout


def test_tune_cold_says_its_recommendation_was_measured_cold(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    proc = run_cli("tune", "--generate", "12", "--max-workers", "1", "--cold", "--rounds", "2",
                   "--out", str(tmp_path / "out"))
    _cold_or_skip(proc)
    res = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert res["page_cache"] == "cold" and res["rounds"] == 2
    assert all(len(p["runs"]) == 2 and round(p["images_per_second"], 1) in p["runs"] for p in res["points"])
    assert "each point the median of 2 runs" in proc.stdout
    assert "Every run with the page cache emptied of the corpus (cold)" in proc.stdout
    assert "Recommended, measured cold" in proc.stdout


@pytest.mark.quick
def test_bench_rejects_zero_rounds(tmp_path):
    proc = run_cli("bench", "--generate", "10", "--rounds", "0", "--out", str(tmp_path))
    assert proc.returncode == 2 and "--rounds must be at least 1" in proc.stderr


def test_cold_empties_the_page_cache_of_the_corpus_without_root_too(tmp_path, monkeypatch):
    """The fadvise path, as a user who is not root takes it; mincore says whether it worked."""
    from etl.bench import cold

    files = []
    for i in range(20):
        files.append(tmp_path / f"{i}.jpg")
        files[-1].write_bytes(os.urandom(64 * 1024))
    assert cold.cached_share(files) > 0.9  # just written: in the page cache
    monkeypatch.setattr(cold, "DROP_CACHES", tmp_path / "no" / "drop_caches")  # cannot be written
    try:
        how = cold.evict(files)
    except UsageError as exc:  # tmpfs (or another cache-only filesystem) keeps its pages: nothing to drop
        pytest.skip(f"this filesystem cannot evict its files: {exc}")
    assert how == "posix_fadvise(DONTNEED) per file"
    assert cold.cached_share(files) < 0.01

def test_tune_without_matplotlib_prints_its_table_and_the_hint(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "matplotlib.py").write_text("raise ImportError('no matplotlib in this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "etl", "tune", "--generate", "12", "--max-workers", "1",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "| queue depth |" in proc.stdout and "workers = 1" in proc.stdout
    assert [line for line in proc.stdout.splitlines() if "pip install 'etl[plot]'" in line] == [
        "plot: not drawn, the chart needs matplotlib: pip install 'etl[plot]'"]
    assert (tmp_path / "out" / "tune.json").exists() and not (tmp_path / "out" / "sweep.png").exists()


@pytest.mark.quick
def test_recommend_prefers_fewer_workers_within_three_percent():
    pts = [SweepPoint(1, 64, 100, 50, 100), SweepPoint(2, 64, 198, 99, 150), SweepPoint(3, 64, 200, 99, 200)]
    assert recommend(pts).workers == 2
    noise = pts + [SweepPoint(2, 256, 199, 99, 150), SweepPoint(2, 64, 199.5, 99, 160, queue_depth=4)]
    assert (recommend(noise).chunk_size, recommend(noise).queue_depth) == (64, 2)  # defaults unless clearly beaten
    better = pts + [SweepPoint(2, 64, 240, 99, 160, queue_depth=4)]
    assert recommend(better).queue_depth == 4


@pytest.mark.quick
def test_bench_rejects_a_missing_source(tmp_path):
    proc = run_cli("bench", "--src", str(tmp_path / "none"))
    assert proc.returncode == 2 and "--src folder not found" in proc.stderr


@pytest.mark.quick
def test_the_median_run_is_a_run_that_happened():
    from etl.bench.endtoend import median_run

    runs = [{"images_per_second": v, "cpu_seconds": v / 10} for v in (600.0, 500.0, 550.0)]
    assert median_run(runs)["images_per_second"] == 550 and median_run(runs)["cpu_seconds"] == 55
    assert median_run(runs)["runs_images_per_second"] == [600, 500, 550]  # in the order they ran
    assert median_run(runs[:2])["images_per_second"] == 500  # of two, the slower one


def bench_cli(*args: str, tmp: Path, **kw) -> subprocess.Popen:
    """`python -m etl ARGS` with its scratch folders (TMPDIR) in `tmp`, to see what it leaves there."""
    return subprocess.Popen([sys.executable, "-m", "etl", *args], env={**os.environ, "TMPDIR": str(tmp)},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.quick
@pytest.mark.parametrize("command", ["bench", "tune"])
def test_bench_and_tune_refuse_a_folder_without_images_in_one_line(tmp_path, command):
    # bench used to loop for ever in its LMDB cost probe; tune gave a traceback
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    proc = bench_cli(command, "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), tmp=tmp_path / "tmp")
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a regression that loops again must not outlive the test
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert f"etl: error: --src {tmp_path / 'empty'} holds no images" in err
    assert list((tmp_path / "tmp").iterdir()) == [] and not (tmp_path / "o").exists()


@pytest.mark.quick
def test_the_corpus_follows_linked_class_folders_as_convert_does(tmp_path):
    from etl.bench.corpus import build_corpus, corpus_files
    from etl.synth import TreeSpec, make_tree

    make_tree(tmp_path / "real", TreeSpec(classes=2, per_class=3, seed=1, awkward=False))
    (tmp_path / "linked").mkdir()
    for folder in sorted((tmp_path / "real").iterdir()):
        (tmp_path / "linked" / folder.name).symlink_to(folder)
    tree = build_corpus(tmp_path / "work", str(tmp_path / "linked"), 0)
    assert [p.relative_to(tree) for p in corpus_files(tree)] == [p.relative_to(tmp_path / "real")
                                                                  for p in corpus_files(tmp_path / "real")]


def test_bench_stopped_by_sigterm_removes_its_scratch_folder(tmp_path):
    from etl.synth import TreeSpec, make_tree

    make_tree(tmp_path / "src", TreeSpec(classes=2, per_class=6, seed=1, awkward=False))
    (tmp_path / "tmp").mkdir()
    proc = bench_cli("bench", "--src", str(tmp_path / "src"), "--repeat", "4", "--workers", "1", "--rounds", "1",
                     "--out", str(tmp_path / "o"), tmp=tmp_path / "tmp")
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "tmp").glob("etl-bench-*")) and proc.poll() is None:
            assert time.monotonic() < deadline, "the bench made no scratch folder"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert list((tmp_path / "tmp").glob("etl-bench-*")) == []



POOL_SIGTERM = """
import multiprocessing, signal
from etl.baselines import _init_worker
from etl.pipeline import sigterm_as_interrupt
def handler(_):
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
with sigterm_as_interrupt(), multiprocessing.get_context("fork").Pool(1, initializer=_init_worker) as pool:
    print(pool.apply(handler, (0,)))
"""


def test_the_pool_baselines_workers_die_of_the_sigterm_pool_exit_sends():
    """etl bench runs under sigterm_as_interrupt; its forked Pool workers must not inherit that handler: Pool's
    exit SIGTERMs them, and one unwinding with the task queue's lock held hung its siblings for ever. In a fresh
    process: a fork of the test runner itself could inherit a lock another test's thread holds."""
    proc = subprocess.run([sys.executable, "-c", POOL_SIGTERM], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "True", proc.stderr
