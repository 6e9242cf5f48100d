"""--shard-size: a split as a folder of LMDB shards, the same records as one database, read as one, resumed by shard."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest

from etl.check import verify
from etl.pipeline import convert
from etl.reader import LmdbDataset
from etl.settings import build_settings
from etl.synth import TreeSpec, make_tree

from .conftest import run_cli
from .test_end_to_end import all_records


def records(db: Path) -> list[tuple[bytes, bytes]]:
    return all_records(db)


def shard_dirs(out: Path, split: str = "train") -> list[Path]:
    return sorted(p for p in (out / f"{split}_db").iterdir() if p.is_dir())  # as DALI is given them


@pytest.fixture(scope="module")
def runs(small_tree, tmp_path_factory):
    """The same job converted as one database and as shards (with bad files among the images: skips)."""
    base = tmp_path_factory.mktemp("shards")
    tree = shutil.copytree(small_tree / "train", base / "tree")
    for n, cls in enumerate(sorted(p for p in tree.iterdir() if p.is_dir())):
        (cls / f"{cls.name}_bad{n}.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")  # skipped
    common = {"train_dir": str(tree), "val_pct": 25.0, "workers": 2, "chunk_size": 4}
    one = convert(build_settings({**common, "out_dir": str(base / "one")}), progress=False)
    sharded = convert(build_settings({**common, "out_dir": str(base / "sh"), "shard_size": 10}), progress=False)
    return base, one, sharded


def test_the_shards_hold_the_one_database_record_for_record(runs):
    base, one, sharded = runs
    for split in ("train", "val"):
        whole = records(base / "one" / f"{split}_db")
        joined = [r for d in shard_dirs(base / "sh", split) for r in records(d)]
        assert [v for _, v in joined] == [v for _, v in whole] and whole
        labels = [k.split(b"_")[1] for k, _ in whole]
        assert [k.split(b"_")[1] for k, _ in joined] == labels
        numbers = [int(k[:8]) for k, _ in joined]
        assert numbers == sorted(numbers) and all(n >= i for i, n in enumerate(numbers))
    assert one["splits"]["train"]["skipped"] > 0  # the tree's bad files: shard keys keep the images' places
    for name in ("labels.txt", "train.txt", "val.txt", "mean.binaryproto", "mean.jpg"):
        assert (base / "one" / name).read_bytes() == (base / "sh" / name).read_bytes(), name
    for key in ("written", "skipped", "per_class"):
        assert one["splits"]["train"][key] == sharded["splits"]["train"][key]


def test_shards_are_whole_chunks_and_named_in_write_order(runs):
    base, _, sharded = runs
    manifest = json.loads((base / "sh" / "train_db" / "manifest.json").read_text())
    assert manifest["shard_size"] == 12  # 10 rounded up to whole chunks of 4
    names = [s["name"] for s in manifest["shards"]]
    assert names == sorted(names) == [d.name for d in shard_dirs(base / "sh")]
    assert names[0] == f"00000-of-{len(names):05d}" and len(names) > 1
    assert sum(s["records"] for s in manifest["shards"]) == manifest["records"] == sharded["splits"]["train"]["written"]
    assert [s["name"] for s in sharded["splits"]["train"]["shards"]] == names


def test_a_sharded_split_reads_and_verifies_as_one(runs):
    base, _, _ = runs
    assert not verify(str(base / "sh"), progress=False).problems
    whole, sharded = LmdbDataset(base / "one" / "train_db"), LmdbDataset(base / "sh" / "train_db")
    assert len(whole) == len(sharded) > 0
    for i in (0, len(whole) // 2, len(whole) - 1, -1):
        (a, la), (b, lb) = whole[i], sharded[i]
        assert la == lb and np.array_equal(a, b)
    assert [lab for _, lab in sharded] == [lab for _, lab in whole]


def test_resume_redoes_only_the_shard_whose_marker_is_gone(runs, tmp_path):
    base, _, _ = runs
    out = tmp_path / "sh"
    common = {"train_dir": str(Path(json.loads((base / "sh" / "report.json").read_text())["settings"]["train_dir"])),
              "out_dir": str(out), "val_pct": 25.0, "workers": 2, "chunk_size": 4, "shard_size": 10}
    convert(build_settings(common), progress=False)
    dirs = shard_dirs(out)
    before = {d.name: os.stat(d / "data.mdb").st_mtime_ns for d in dirs}
    (dirs[1] / ".etl" / "done.json").unlink()
    (dirs[1] / "data.mdb").unlink()  # and its database: the shard starts again from nothing
    report = convert(build_settings({**common, "resume": True}), progress=False)
    after = {d.name: os.stat(d / "data.mdb").st_mtime_ns for d in shard_dirs(out)}
    assert [n for n in before if before[n] != after[n]] == [dirs[1].name]
    for split in ("train", "val"):
        assert [r for d in shard_dirs(out, split) for r in records(d)] == \
            [r for d in shard_dirs(base / "sh", split) for r in records(d)]
    assert report["splits"]["train"]["resumed_from"] == report["splits"]["train"]["written"] - \
        report["splits"]["train"]["shards"][1]["records"]
    assert not verify(str(out), progress=False).problems


def test_a_shard_database_is_a_plain_lmdb(runs):
    base, _, _ = runs
    env = lmdb.open(str(shard_dirs(base / "sh")[0]), readonly=True, lock=False)
    assert env.stat()["entries"] > 0
    env.close()


def test_shards_converted_at_once_by_their_own_writers_are_the_same(runs, tmp_path):
    base, _, sharded = runs
    settings = json.loads((base / "sh" / "report.json").read_text())["settings"]
    report = convert(build_settings({"train_dir": settings["train_dir"], "out_dir": str(tmp_path / "at_once"),
                                     "val_pct": 25.0, "workers": 2, "chunk_size": 4, "shard_size": 10,
                                     "shard_writers": 2}), progress=False)
    for split in ("train", "val"):
        assert [r for d in shard_dirs(tmp_path / "at_once", split) for r in records(d)] == \
            [r for d in shard_dirs(base / "sh", split) for r in records(d)]
    for name in ("train.txt", "val.txt", "mean.binaryproto"):
        assert (tmp_path / "at_once" / name).read_bytes() == (base / "sh" / name).read_bytes(), name
    assert report["splits"]["train"]["written"] == sharded["splits"]["train"]["written"]
    assert report["splits"]["train"]["workers"] == 1  # each shard's share of the 2 workers


def test_after_a_merge_resume_is_refused_and_overwrite_clears_the_kept_shards(runs, tmp_path):
    from etl.merge import run_merge

    base, _, _ = runs
    out = tmp_path / "merged"
    shutil.copytree(base / "sh", out)
    run_merge(str(out), keep_shards=True, progress=False)
    assert (out / "train_db" / "data.mdb").is_file() and (out / "train_db.shards").is_dir()
    settings = json.loads((out / "report.json").read_text())["settings"]
    common = {"train_dir": settings["train_dir"], "out_dir": str(out), "val_pct": 25.0, "workers": 2, "chunk_size": 4,
              "shard_size": 10}
    with pytest.raises(Exception, match="etl merge joined its shards"):
        convert(build_settings({**common, "resume": True}), progress=False)
    convert(build_settings({**common, "overwrite": True}), progress=False)
    assert not (out / "train_db.shards").exists() and (out / "train_db" / "manifest.json").is_file()


def test_a_sharded_dataset_pickles_for_dataloader_workers(runs):
    import pickle

    base, _, _ = runs
    ds = LmdbDataset(base / "sh" / "train_db")
    size, last = len(ds), ds[-1][1]
    clone = pickle.loads(pickle.dumps(ds))
    ds.close()  # py-lmdb opens an environment once per process: as in a worker, only the clone reads
    assert len(clone) == size and clone[size - 1][1] == last
    clone.close()


def test_ctrl_c_in_a_sharded_split_gives_the_splits_figures_and_the_lock_covers_the_shards(tmp_path):
    from .test_faults import etl, start

    tree = tmp_path / "tree"
    make_tree(tree, TreeSpec(classes=3, per_class=8, seed=41, awkward=False))
    args = ("--val-pct", "0", "--chunk-size", "2", "--commit-every", "2", "--workers", "1", "--quiet",
            "--shard-size", "6")
    ref = tmp_path / "ref"
    assert etl("convert", tree, ref, *args).returncode == 0
    order = (ref / "train.txt").read_text().splitlines()
    victim = Path(order[-1].rsplit(" ", 1)[0]).name  # the last image of the write order: in the last shard
    out = tmp_path / "out"
    proc = start("convert", tree, out, *args, env={"ETL_TEST_FAULTS": f"hang={victim}"})
    last = out / "train_db" / "00003-of-00004" / ".etl" / "train.state.json"
    deadline = time.monotonic() + 60
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert last.exists(), "the last shard never committed"
        second = etl("convert", tree, out, *args, "--resume")  # the same OUT, while its shards are written
        assert second.returncode == 2 and second.stderr.count("\n") == 1 and "in use by another etl run" in \
            second.stderr
        inside = etl("convert", tree, out / "train_db" / "00000-of-00004", "--val-pct", "0", "--overwrite", "--quiet")
        assert inside.returncode == 2 and "in use by another etl run" in inside.stderr, inside.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    said = re.search(r"train has (\d+) of (\d+) images converted and committed \(3 of 4 shards complete\)", err)
    assert said and 18 <= int(said[1]) < int(said[2]) == len(order), err  # the split's figures, not one shard's
    assert etl("convert", tree, out, *args, "--resume").returncode == 0
    assert [r for d in shard_dirs(out) for r in records(d)] == [r for d in shard_dirs(ref) for r in records(d)]


@pytest.mark.quick
def test_shard_writers_without_shards_is_refused_before_any_work(small_tree, tmp_path):
    proc = run_cli("convert", str(small_tree / "train"), str(tmp_path / "out"), "--shard-writers", "2")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--shard-writers" in proc.stderr and "give --shard-size N too" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_run_says_once_how_big_its_shards_are_and_that_workers_outnumber_the_cores(small_tree, tmp_path):
    from etl.settings import usable_cores

    many = usable_cores() + 1
    proc = run_cli("convert", str(small_tree / "val"), str(tmp_path / "out"), "--val-pct", "0", "--shard-size", "5",
                   "--chunk-size", "4", "--workers", str(many))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("shards of 8 images (--shard-size 5 rounded up to a multiple of --chunk-size 4)") == 1
    assert proc.stderr.count(f"--workers {many} is more than the {usable_cores()} usable cores") == 1
    assert json.loads((tmp_path / "out" / "train_db" / "manifest.json").read_text())["shard_size"] == 8
    shown = "".join(run_cli("convert", "--help").stdout.split())  # argparse breaks lines at hyphens too
    assert "images per shard, rounded up to a multiple of --chunk-size (500 gives 512".replace(" ", "") in shown
