"""Page-cache hygiene: the auto choice, the input estimate (sizes, what is cached), cgroup headroom,
the options, and that workers and writer drop exactly what was chosen."""

import json
import os
import subprocess
import sys

import psutil
import pytest

from etl.messages import Item
from etl.pagecache import (
    InputSize,
    cgroup_headroom,
    choose_page_cache,
    estimate_input,
    free_memory_bytes,
    resident_share,
)
from etl.settings import UsageError, build_settings
from etl.sources import FileReader, Split

from .conftest import run_cli

GB = 10**9


@pytest.mark.quick
def test_auto_keeps_input_whose_addition_fits_in_half_the_free_memory():
    kept = choose_page_cache("auto", InputSize(4 * GB, 0), 8 * GB)
    assert kept == (False, True, "auto: input kept (~4.0 GB, ~0.0 GB of it cached already, 8.0 GB of memory "
                                 "free); database dropped after each commit")
    assert choose_page_cache("auto", InputSize(4 * GB + 1, 0), 8 * GB)[:2] == (True, True)
    # What an earlier run left cached costs nothing more: a second run keeps it too.
    assert choose_page_cache("auto", InputSize(9 * GB, 6 * GB), 8 * GB)[:2] == (False, True)
    assert choose_page_cache("keep", InputSize(10**15, 0), 0) == (False, False, "keep (set by the page_cache option)")
    assert choose_page_cache("drop", InputSize(0, 0), 10**15)[:2] == (True, True)


@pytest.mark.quick
def test_input_is_estimated_from_an_even_sample(tmp_path):
    items = []
    for i in range(1000):
        (tmp_path / f"{i}.jpg").write_bytes(b"x" * (100 + (i % 7) * 50))
        items.append(Item(i, f"{i}.jpg", 0))
    split = Split("train", FileReader(str(tmp_path)), items)
    sample = [it.path for it in split.sample()]
    assert len(sample) == 256 and sample[0] == "0.jpg" and sample[-1] == "999.jpg"
    exact = sum(100 + (i % 7) * 50 for i in range(1000))
    size = split.input_size()
    assert size == estimate_input([str(tmp_path / p) for p in sample], len(items))
    assert abs(size.total - exact) < 0.03 * exact
    assert size.cached == size.total  # just written: all of it in the page cache
    assert estimate_input([str(tmp_path / "gone.jpg")], 5) == (0, 0)
    assert Split("train", FileReader(str(tmp_path)), []).sample() == []
    assert len(Split("train", FileReader(str(tmp_path)), items[:3]).sample()) == 3


@pytest.mark.quick
def test_resident_share_sees_what_is_cached(tmp_path):
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as fh:
        fh.truncate(1 << 20)  # a hole: nothing of it has been read or written, so nothing is cached
    assert resident_share(str(sparse), 1 << 20) == 0.0
    sparse.read_bytes()
    assert resident_share(str(sparse), 1 << 20) == 1.0
    assert resident_share(str(tmp_path / "missing"), 10) == 0.0


def _cgroup(tmp_path, proc: str, files: dict[str, str]) -> int | None:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "proc_cgroup").write_text(proc)
    return cgroup_headroom(str(tmp_path / "fs"), str(tmp_path / "proc_cgroup"))


@pytest.mark.quick
def test_cgroup_headroom_v2_takes_the_tightest_level(tmp_path):
    files = {"fs/memory.max": "max\n", "fs/memory.current": "900\n",
             "fs/job/memory.max": "1000\n", "fs/job/memory.current": "600\n",
             "fs/job/step/memory.max": "max\n", "fs/job/step/memory.current": "100\n"}
    assert _cgroup(tmp_path, "0::/job/step\n", files) == 400


@pytest.mark.quick
def test_cgroup_headroom_v1_and_no_limit(tmp_path):
    files = {"fs/memory/memory.limit_in_bytes": "9223372036854771712\n", "fs/memory/memory.usage_in_bytes": "5\n",
             "fs/memory/box/memory.limit_in_bytes": "2000\n", "fs/memory/box/memory.usage_in_bytes": "500\n"}
    assert _cgroup(tmp_path, "9:pids:/\n4:memory:/box\n1:cpu:/\n", files) == 1500
    assert _cgroup(tmp_path / "b", "4:memory:/\n", {"fs/memory/memory.limit_in_bytes": "9223372036854771712\n",
                                                    "fs/memory/memory.usage_in_bytes": "5\n"}) is None
    assert cgroup_headroom(str(tmp_path / "nowhere"), str(tmp_path / "no_such_file")) is None


@pytest.mark.quick
def test_free_memory_is_at_most_the_systems():
    assert 0 <= free_memory_bytes() <= psutil.virtual_memory().free + 64 * 2**20  # it moves while we look


@pytest.mark.parametrize(("mode", "input_dropped", "output_dropped"),
                         [("drop", True, True), ("keep", False, False), ("auto", False, True)])
def test_choice_reaches_workers_and_writer(small_tree, tmp_path, mode, input_dropped, output_dropped):
    """`etl convert` forks its workers and writer, so they inherit a fadvise that logs the file of each call."""
    log, out = tmp_path / "fadvise.log", tmp_path / "o"
    code = (
        "import os, sys\n"
        "def fadvise(fd, offset, length, advice):\n"
        f"    open({str(log)!r}, 'a').write(f'{{advice}} {{os.readlink(f\"/proc/self/fd/{{fd}}\")}}\\n')\n"
        "os.posix_fadvise = fadvise\n"
        "from etl.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "convert", str(small_tree / "val"), str(out), "--val-pct", "0",
                           "--quiet", "--workers", "2", "--page-cache", mode],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    calls = [line.split(" ", 1) for line in log.read_text().splitlines()] if log.exists() else []
    assert {advice for advice, _ in calls} <= {str(os.POSIX_FADV_DONTNEED)}
    paths = [path for _, path in calls]
    inputs = {p for p in paths if p.startswith(str(small_tree / "val"))}
    split = json.loads((out / "report.json").read_text())["splits"]["train"]
    assert len(inputs) == (split["listed"] if input_dropped else 0)
    assert (str(out / "train_db" / "data.mdb") in paths) == output_dropped
    assert split["io"]["page_cache"].startswith(mode)


def test_options_alias_and_old_preset_key(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    base = {"train_dir": str(tmp_path / "train"), "out_dir": str(tmp_path / "o")}
    assert build_settings(base).page_cache == "auto"
    conf = tmp_path / "c.toml"
    for text, mode in (("keep_page_cache = true\n", "keep"), ("keep_page_cache = false\n", "drop"),
                       ('page_cache = "keep"\n', "keep")):
        conf.write_text(text)
        assert build_settings(base, str(conf)).page_cache == mode
    for text, message in (('keep_page_cache = "yes"\n', "keep_page_cache expects true or false"),
                          ('keep_page_cache = true\npage_cache = "drop"\n', "not both"),
                          ('page_cache = "sometimes"\n', "--page-cache must be one of auto, drop, keep")):
        conf.write_text(text)
        with pytest.raises(UsageError, match=message):
            build_settings(base, str(conf))
    train, out = str(tmp_path / "train"), str(tmp_path / "o")
    for args, message in ((["--page-cache", "sometimes"], "--page-cache: invalid choice: 'sometimes'"),
                          (["--page-cache", "drop", "--keep-page-cache"], "not allowed with argument --page-cache")):
        proc = run_cli("convert", train, out, *args)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
