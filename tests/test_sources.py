"""Scanning folders: labels in byte order, nesting, extensions, splits and per-class limits."""

import os
from pathlib import Path

import pytest

from etl.settings import Settings, UsageError
from etl.sources import plan, scan_tree

pytestmark = pytest.mark.quick


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_classes_sorted_in_byte_order_and_nested_folders_flattened(tmp_path):
    touch(tmp_path, "b/1.jpg", "B/2.JPEG", "a/deep/er/3.PnG", "a/4.bmp", "a/5.txt", "_/6.ppm", "c/7.PGM",
          "loose.jpg")
    tree = scan_tree(str(tmp_path))
    assert list(tree) == ["B", "_", "a", "b", "c"]  # uppercase before '_' before lowercase
    assert tree["a"] == ["a/4.bmp", "a/deep/er/3.PnG"]  # .txt ignored, nested kept
    assert tree["c"] == ["c/7.PGM"]


def settings(tmp_path, **kw) -> Settings:
    return Settings(train_dir=str(tmp_path / "train"), out_dir=str(tmp_path / "out"), **kw)


def test_val_pct_is_per_class_and_labels_follow_the_class(tmp_path):
    for c, n in (("x", 8), ("y", 4)):
        touch(tmp_path / "train", *(f"{c}/{i}.jpg" for i in range(n)))
    job = plan(settings(tmp_path, val_pct=25.0))
    train, val = job.splits
    assert job.labels == ["x", "y"]
    assert sorted(i.path.split("/")[0] for i in val.items) == ["x", "x", "y"]
    assert len(train.items) == 9
    for item in train.items + val.items:
        assert job.labels[item.label] == item.path.split("/")[0]
    assert [i.index for i in train.items] == list(range(9))
    assert not {i.path for i in train.items} & {i.path for i in val.items}


def test_default_is_digits_25_pct_and_same_seed_same_order(tmp_path):
    touch(tmp_path / "train", *(f"c{c}/{i}.jpg" for c in range(3) for i in range(20)))
    a, b = plan(settings(tmp_path)), plan(settings(tmp_path))
    assert len(a.splits[1].items) == 15
    assert a.splits[0].items == b.splits[0].items
    c = plan(settings(tmp_path, seed=2))
    assert [i.path for i in c.splits[0].items] != [i.path for i in a.splits[0].items]


def test_min_and_max_per_class(tmp_path):
    touch(tmp_path / "train", *(f"big/{i}.jpg" for i in range(10)), "small/0.jpg")
    job = plan(settings(tmp_path, val_pct=0.0, min_per_class=2, max_per_class=4))
    assert job.labels == ["big"]
    assert len(job.splits[0].items) == 4
    assert any("small" in note for note in job.notes)


def test_val_folder_must_use_train_class_names(tmp_path):
    touch(tmp_path / "train", "a/1.jpg", "b/1.jpg")
    touch(tmp_path / "val", "a/v.jpg", "zzz/v.jpg")
    with pytest.raises(UsageError, match="zzz"):
        plan(settings(tmp_path, val_dir=str(tmp_path / "val")))


def test_val_folder_labels(tmp_path):
    touch(tmp_path / "train", "a/1.jpg", "b/1.jpg")
    touch(tmp_path / "val", "b/v.jpg")
    job = plan(settings(tmp_path, val_dir=str(tmp_path / "val")))
    assert [(i.path, i.label) for i in job.splits[1].items] == [("b/v.jpg", 1)]
    assert any("no val images" in n for n in job.notes)


def test_empty_tree_is_a_usage_error(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(UsageError, match="no images"):
        plan(settings(tmp_path))


def test_linked_folders_are_followed_once_and_loops_do_not_repeat(tmp_path):
    touch(tmp_path, "a/1.jpg", "a/sub/2.jpg", "shared/3.jpg")
    os.symlink(tmp_path / "a", tmp_path / "a" / "sub" / "loop")  # a -> sub -> loop -> a
    os.symlink(tmp_path / "a" / "sub", tmp_path / "a" / "again")  # the same folder twice
    os.symlink(tmp_path / "shared", tmp_path / "a" / "extra")
    tree = scan_tree(str(tmp_path))
    assert sorted(os.path.basename(p) for p in tree["a"]) == ["1.jpg", "2.jpg", "3.jpg"]


def test_val_pct_names_the_classes_too_small_to_give_a_val_image(tmp_path):
    touch(tmp_path / "train", *(f"x/{i}.jpg" for i in range(8)), *(f"y/{i}.jpg" for i in range(4)))
    job = plan(settings(tmp_path, val_pct=10.0))
    assert [i.path.split("/")[0] for i in job.splits[1].items] == ["x"]
    assert job.notes == ["1 class has no val images: --val-pct 10 of so few images rounds to none, e.g. 'y' "
                         "(4 images)"]
    assert plan(settings(tmp_path, val_pct=0.0)).notes == []  # no val split asked for: nothing to say


def test_val_pct_that_gives_no_val_split_at_all_says_so(tmp_path):
    touch(tmp_path / "train", *(f"{c}/{i}.jpg" for c in "ab" for i in range(3)))
    job = plan(settings(tmp_path, val_pct=10.0))
    assert [sp.name for sp in job.splits] == ["train"]
    assert job.notes[0].startswith("2 classes have no val images: --val-pct 10 of so few images rounds to none, "
                                   "e.g. 'a' (3 images); no val_db is written")


def test_val_pct_of_a_list_names_the_label_too_small(tmp_path):
    touch(tmp_path, *(f"img/{i}.jpg" for i in range(12)))
    listing = tmp_path / "train.txt"
    listing.write_text("".join(f"img/{i}.jpg {0 if i < 10 else 1}\n" for i in range(12)))
    job = plan(Settings(train_dir=str(listing), out_dir=str(tmp_path / "out"), val_pct=10.0))
    assert len(job.splits[1].items) == 1
    assert job.notes == ["1 class has no val images: --val-pct 10 of so few images rounds to none, e.g. '1' "
                         "(2 images)"]
