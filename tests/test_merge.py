"""etl merge: shards cut from a one-machine run (as convert --shard-size writes them) merge back into its very
bytes; a merge killed at any step finishes on the next run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import lmdb
import pytest

from etl.check import render, verify
from etl.layout import CHECKPOINT_DIR
from etl.memory import MB, commit_records
from etl.merge import DONE, FORMAT, MANIFEST, run_merge
from etl.pipeline import convert
from etl.settings import build_settings
from etl.sources.plan import plan

from .conftest import run_cli
from .test_end_to_end import all_records

CHUNK, EVERY = 4, 8


def settings_for(tree: Path, out: Path, **more):
    values = {"train_dir": str(tree / "train"), "out_dir": str(out), "workers": 2, "chunk_size": CHUNK,
              "commit_every": EVERY, **more}
    return build_settings(values)


def txns_of(db: Path) -> int:
    env = lmdb.open(str(db), readonly=True, lock=False)
    last = env.info()["last_txnid"]
    env.close()
    return last


def make_shards(ref: Path, out: Path, s, split: str, shard_size: int, items: list[int] | None = None,
                n_items: int | None = None) -> None:
    """OUT as a sharded run writes it: the one-machine run's records, keyed by item index, cut into shards of
    shard_size items; items: each record's item index (default: its write index, no image skipped)."""
    if not out.exists():
        shutil.copytree(ref, out)
    shutil.rmtree(out / f"{split}_db")
    (out / f"{split}_db.sums").unlink()
    pairs = all_records(ref / f"{split}_db")
    sums = (ref / f"{split}_db.sums").read_bytes().splitlines(keepends=True)
    lines = (ref / f"{split}.txt").read_text().splitlines(keepends=True)
    items = list(range(len(pairs))) if items is None else items
    n_items = len(pairs) if n_items is None else n_items
    count = -(-n_items // shard_size)
    shards = []
    for k in range(count):
        name = f"{k:05d}-of-{count:05d}"
        mine = [i for i, item in enumerate(items) if k * shard_size <= item < (k + 1) * shard_size]
        folder = out / f"{split}_db" / name
        (folder / CHECKPOINT_DIR).mkdir(parents=True)
        keys = [b"%08d_%s" % (items[i], pairs[i][0].split(b"_")[1]) for i in mine]
        env = lmdb.open(str(folder), map_size=1 << 30)
        with env.begin(write=True) as txn:
            for key, i in zip(keys, mine, strict=True):
                txn.put(key, pairs[i][1])
        env.close()
        (folder / CHECKPOINT_DIR / f"{split}_db.sums").write_bytes(
            b"".join(key + sums[i][sums[i].index(b" "):] for key, i in zip(keys, mine, strict=True)))
        (folder / CHECKPOINT_DIR / f"{split}.txt").write_text("".join(lines[i] for i in mine))
        (folder / CHECKPOINT_DIR / DONE).write_text('{"job": "", "shard": {}, "stats": {}}')
        shards.append({"name": name, "first_item": k * shard_size, "records": len(mine),
                       "items": min(shard_size, n_items - k * shard_size)})
    manifest = {"format": FORMAT, "split": split, "shard_size": shard_size, "chunk_size": s.chunk_size,
                "commit_every": commit_records(s), "commit_bytes": s.max_buffer_mb * MB, "items": n_items,
                "records": len(pairs), "shards": shards}
    (out / f"{split}_db" / MANIFEST).write_text(json.dumps(manifest))


def assert_same(ref: Path, out: Path, splits=("train", "val")) -> None:
    for split in splits:
        assert (out / f"{split}_db" / "data.mdb").read_bytes() == (ref / f"{split}_db" / "data.mdb").read_bytes()
        assert (out / f"{split}_db.sums").read_bytes() == (ref / f"{split}_db.sums").read_bytes()
        assert not (out / f"{split}_db" / MANIFEST).exists()
    check = verify(str(out), progress=False)
    assert not check.problems, render(check)
    leftovers = [p.name for p in out.iterdir() if p.name.endswith((".merging", ".shards", ".deleting"))]
    assert leftovers == []


@pytest.fixture(scope="module")
def one_machine(small_tree, tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref") / "ds"
    s = settings_for(small_tree, ref, val_dir=str(small_tree / "val"))
    convert(s, progress=False)
    assert txns_of(ref / "train_db") >= 4  # several commits, each cut at a chunk's end
    return ref, s


@pytest.fixture
def sharded(one_machine, tmp_path):
    ref, s = one_machine
    out = tmp_path / "ds"
    make_shards(ref, out, s, "train", 8)
    make_shards(ref, out, s, "val", 4)
    return ref, out


def test_merge_gives_the_one_machine_run_byte_for_byte(sharded):
    ref, out = sharded
    assert len(list((out / "train_db").glob("*-of-*"))) >= 4
    proc = run_cli("merge", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "etl merge: train:" in proc.stdout and "MB/s" in proc.stdout
    assert_same(ref, out)
    assert run_cli("verify", str(out), "--quiet").returncode == 0
    again = run_cli("merge", str(out))  # merged already: left alone
    assert again.returncode == 0 and "one database already" in again.stdout
    assert_same(ref, out)


def test_keep_shards(sharded):
    ref, out = sharded
    run_merge(str(out), keep_shards=True, progress=False)
    for split in ("train", "val"):
        kept = out / f"{split}_db.shards"
        assert (kept / MANIFEST).is_file() and len(list(kept.glob("*-of-*"))) >= 2
        assert (out / f"{split}_db" / "data.mdb").read_bytes() == (ref / f"{split}_db" / "data.mdb").read_bytes()
    assert run_cli("verify", str(out), "--quiet").returncode == 0
    proc = run_cli("merge", str(out))
    assert proc.returncode == 0 and "kept in train_db.shards" in proc.stdout


def test_a_partial_merging_folder_is_built_again(sharded):
    ref, out = sharded
    (out / "train_db.merging").mkdir()
    shutil.copy(ref / "val_db" / "data.mdb", out / "train_db.merging" / "data.mdb")  # another database, cut short
    (out / "train_db.sums.merging").write_bytes(b"00000000_0 deadbeef\n")
    run_merge(str(out), progress=False)
    assert_same(ref, out)


class Killed(Exception):
    pass


def kill_at(monkeypatch, module, name: str, nth: int, when=lambda *a: True) -> None:
    """The nth call of module.name that `when` accepts raises Killed, as if the process died there."""
    real, calls = getattr(module, name), []

    def fake(*args, **kwargs):
        if when(*args):
            calls.append(args)
            if len(calls) == nth:
                raise Killed(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, fake)


@pytest.mark.parametrize("step", ["before the first rename", "with the shards aside", "with the sums moved",
                                  "while deleting the shards"])
def test_a_merge_killed_at_each_step_finishes_on_the_next_run(sharded, monkeypatch, step):
    ref, out = sharded
    with monkeypatch.context() as m:
        if step == "before the first rename":
            kill_at(m, os, "rename", 1)
        elif step == "with the shards aside":
            kill_at(m, os, "replace", 1, lambda src, dst: str(src).endswith(".sums.merging"))
        elif step == "with the sums moved":
            kill_at(m, os, "rename", 2)
        else:
            kill_at(m, shutil, "rmtree", 1, lambda path, *a: str(path).endswith(".deleting"))
        with pytest.raises(Killed):
            run_merge(str(out), progress=False)
    run_merge(str(out), progress=False)
    assert_same(ref, out)


def test_a_shard_without_its_done_marker_is_refused(sharded):
    _, out = sharded
    shard = sorted((out / "train_db").glob("*-of-*"))[2]
    (shard / CHECKPOINT_DIR / DONE).unlink()
    proc = run_cli("merge", str(out))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and shard.name in proc.stderr and "--resume" in proc.stderr
    assert (out / "train_db" / MANIFEST).is_file() and not (out / "train_db.merging").exists()


def test_not_a_dataset_or_nothing_sharded(one_machine, tmp_path):
    ref, _ = one_machine
    proc = run_cli("merge", str(tmp_path))
    assert proc.returncode == 2 and "not an etl dataset" in proc.stderr
    shutil.copytree(ref, tmp_path / "ds")
    proc = run_cli("merge", str(tmp_path / "ds"))
    assert proc.returncode == 0 and "one database already" in proc.stdout


def test_skipped_images_leave_gaps_that_merge_closes(small_tree, tmp_path):
    """Images skipped by the one-machine run: their item indices are gaps in the shards' keys, and the chunks
    (hence the commits) are cut by item index, as the writer cut them."""
    tree = tmp_path / "tree"
    shutil.copytree(small_tree / "train", tree / "train")
    for k, folder in enumerate(sorted(p for p in (tree / "train").iterdir() if p.is_dir())):
        for j in range(3):
            (folder / f"junk{k}{j}.JPEG").write_bytes(b"not an image")
    ref = tmp_path / "ref"
    s = settings_for(tree, ref, val_pct=0)
    convert(s, progress=False)
    job = plan(s)
    split = next(sp for sp in job.splits if sp.name == "train")
    prefix = split.reader.list_prefix(s.relative_paths)
    where = {prefix + it.path: it.index for it in split.items}
    items = [where[line.rsplit(" ", 1)[0]] for line in (ref / "train.txt").read_text().splitlines()]
    assert len(items) < len(split.items)  # some were skipped
    out = tmp_path / "out"
    make_shards(ref, out, s, "train", 8, items, len(split.items))
    run_merge(str(out), progress=False)
    assert_same(ref, out, splits=("train",))


def test_convert_with_shard_size_then_merge_is_the_run_without(small_tree, tmp_path):
    """The real thing: convert --shard-size (bad files among the images: skips), merged, against the same job
    converted as one database."""
    tree = shutil.copytree(small_tree / "train", tmp_path / "tree" / "train")
    for n, cls in enumerate(sorted(p for p in tree.iterdir() if p.is_dir())):
        (cls / f"{cls.name}_bad{n}.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    convert(settings_for(tmp_path / "tree", tmp_path / "one", val_pct=25.0), progress=False)
    convert(settings_for(tmp_path / "tree", tmp_path / "sh", val_pct=25.0, shard_size=10), progress=False)
    assert (tmp_path / "sh" / "train_db" / MANIFEST).is_file() and not (tmp_path / "sh" / "train_db.sums").exists()
    proc = run_cli("merge", str(tmp_path / "sh"), "--quiet")
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert_same(tmp_path / "one", tmp_path / "sh")
    for name in ("train.txt", "val.txt", "labels.txt", "mean.binaryproto"):
        assert (tmp_path / "sh" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
