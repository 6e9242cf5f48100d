"""Resume checks that the images already converted are still the files they were converted from: each item's
stamp (size, time, inode) is summed per chunk by the workers and per commit by the writer."""

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from etl.checkpoint import STAMP_MOD, add_stamps, item_stamp, stamp_sum
from etl.converter import ImageConverter, WorkSpec
from etl.messages import Item, SplitState, Task
from etl.runners.ledger import chunks
from etl.sources import FileReader
from etl.synth import TreeSpec, make_tree
from etl.throttle import ReadGate

from .test_end_to_end import all_records
from .test_faults import dataset, etl
from .test_misuse import small_jpeg

ARGS = ("--val-pct", "0", "--relative-paths", "--chunk-size", "4", "--commit-every", "4", "--on-error", "fail",
        "--quiet")


class FixedStamps:
    """A reader whose stamps are given: path -> stamp."""

    def __init__(self, stamps: dict[str, int]) -> None:
        self.stamps = stamps

    def stamp(self, item: Item) -> int:
        return self.stamps[item.path]


def test_the_stamp_sum_is_the_same_in_any_order_and_any_chunks_and_moves_with_one_stamp():
    items = [Item(i, f"c/{i}.jpg", i % 3) for i in range(100)]
    reader = FixedStamps({it.path: random.Random(it.index).getrandbits(200) for it in items})
    whole = stamp_sum(reader, items)
    assert 0 <= whole < STAMP_MOD
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert stamp_sum(reader, shuffled) == whole
    for size in (1, 7, 64):
        total = 0
        for task in chunks(items, size):
            total = add_stamps(total, stamp_sum(reader, task.items))
        assert total == whole
    reader.stamps["c/41.jpg"] += 1
    assert stamp_sum(reader, items) != whole
    assert item_stamp(5, 0) != item_stamp(6, 0)  # the place in the order counts: two files swapped are a change


def test_a_file_stamp_changes_when_the_file_is_replaced_and_is_fixed_when_it_is_gone(tmp_path):
    reader = FileReader(str(tmp_path))
    (tmp_path / "a.jpg").write_bytes(b"x" * 10)
    first = reader.stamp(Item(0, "a.jpg", 0))
    assert first == reader.stamp(Item(0, "a.jpg", 0)) != 0
    (tmp_path / "a.jpg").write_bytes(b"y" * 11)
    assert reader.stamp(Item(0, "a.jpg", 0)) != first
    assert reader.stamp(Item(0, "gone.jpg", 0)) == 0
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "dangling.jpg")
    assert reader.stamp(Item(0, "dangling.jpg", 0)) == 0


def test_a_worker_stamps_every_item_of_its_chunk_the_bad_and_given_up_ones_too(tmp_path):
    for name in ("0.jpg", "1.jpg"):
        (tmp_path / name).write_bytes(small_jpeg())
    (tmp_path / "2.jpg").write_bytes(b"not a jpeg")
    items = tuple(Item(i, f"{i}.jpg", 0) for i in range(4))  # 3.jpg does not exist
    reader = FileReader(str(tmp_path))
    spec = WorkSpec(reader, 0, False, True, 32, 32, "squash", 3, "jpg", 90, 1, 178_956_970, False)
    result = ImageConverter(spec, ReadGate(reader, None, drop_cache=False)).run_chunk(
        Task(7, items, give_up={1: "known bad"}))
    assert len(result.records) == 1 and len(result.failures) == 3
    assert result.input_stamp == stamp_sum(reader, items)


def test_a_state_without_a_stamp_is_one_not_recorded_and_a_state_with_one_reads_back():
    old = {"chunks": 3, "records": 12, "complete": False, "per_label": {"0": 12}, "bytes_read": 100,
           "stage_seconds": {"read": 0.1}}  # as an older etl wrote it
    assert SplitState.from_json(old).input_stamp is None
    assert SplitState().input_stamp == 0  # a fresh run records from its first commit
    state = SplitState(chunks=3, records=12, input_stamp=STAMP_MOD - 1)
    assert SplitState.from_json(json.loads(json.dumps(state.__dict__))) == state


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("stamp")
    make_tree(root / "train", TreeSpec(classes=3, per_class=10, seed=33, awkward=False))
    good = root / "good"
    assert etl("convert", root / "train", good, *ARGS).returncode == 0
    return root / "train", good


def interrupted(tree, tmp_path: Path) -> tuple[Path, Path, Path, bytes, list[Path]]:
    """A copy of the tree whose last image in the write order is bad, converted with --on-error fail: the
    chunks before it are committed. Returns the copy, the output, the bad file, its good bytes, and the
    images committed."""
    source, good = tree
    root, out = tmp_path / "t", tmp_path / "out"
    shutil.copytree(source, root)
    order = [line.rsplit(" ", 1)[0] for line in (good / "train.txt").read_text().splitlines()]
    victim = root / order[-1]
    original = victim.read_bytes()
    victim.write_bytes(b"not an image")
    first = etl("convert", root, out, *ARGS)
    assert first.returncode == 1 and "stopped at the first bad file" in first.stderr
    committed = [root / line.rsplit(" ", 1)[0] for line in (out / "train.txt").read_text().splitlines()]
    assert 0 < len(committed) < len(order) - 1
    return root, out, victim, original, committed


def test_resume_refuses_images_already_converted_that_were_replaced(tree, tmp_path):
    root, out, victim, original, committed = interrupted(tree, tmp_path)
    again = etl("convert", root, out, *ARGS, "--resume")  # nothing touched: the check passes, the bad file stops it
    assert again.returncode == 1 and victim.name in again.stderr
    victim.write_bytes(original)  # the advice: fix the bad file (its chunk is not committed) ...
    changed = committed[1]  # ... but another image, already converted, is replaced too
    changed.write_bytes(small_jpeg())
    records = len(all_records(out / "train_db"))
    proc = etl("convert", root, out, *ARGS, "--resume")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("train images already converted have changed since they were converted "
                                        "(replaced or modified under the same name); convert again with --overwrite in "
                                        "place of --resume")
    assert len(all_records(out / "train_db")) == records  # nothing new converted
    assert etl("convert", root, out, *ARGS, "--overwrite").returncode == 0  # the advice, followed literally
    assert (out / "train.txt").read_text().count(str(changed.relative_to(root))) == 1


def test_resume_after_fixing_only_the_bad_file_writes_everything(tree, tmp_path):
    root, out, victim, original, committed = interrupted(tree, tmp_path)
    victim.write_bytes(original)
    proc = etl("convert", root, out, *ARGS, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert dataset(out) == dataset(tree[1])


def test_an_image_written_back_as_it_was_resumes(tree, tmp_path):
    """The check compares what stat says, not the bytes: the same bytes with the same times are the same file."""
    root, out, victim, original, committed = interrupted(tree, tmp_path)
    changed = committed[0]
    before, data = changed.stat(), changed.read_bytes()
    changed.write_bytes(data[::-1])
    changed.write_bytes(data)
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
    victim.write_bytes(original)
    proc = etl("convert", root, out, *ARGS, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert dataset(out) == dataset(tree[1])


def test_a_checkpoint_without_stamps_resumes_without_the_check(tree, tmp_path):
    """An older etl recorded no stamp: such a run resumes (unchecked), as it did."""
    root, out, victim, original, committed = interrupted(tree, tmp_path)
    for name in ("train.state.json", "train.pending.json"):
        path = out / ".etl" / name
        if path.exists():
            path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "input_stamp"}))
    committed[0].write_bytes(small_jpeg())  # would be refused with a stamp to compare with
    victim.write_bytes(original)
    proc = etl("convert", root, out, *ARGS, "--resume")
    assert proc.returncode == 0, proc.stderr
    state = json.loads((out / ".etl" / "train.state.json").read_text())
    assert state["complete"] and state["input_stamp"] is None  # the rest of that run stays unrecorded
