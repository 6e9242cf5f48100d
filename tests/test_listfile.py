"""List files as input: `etl convert train.txt OUT --root ... --labels synsets.txt --val val.txt --val-root ...`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from etl.check import verify
from etl.cli import main
from etl.pipeline import convert
from etl.settings import UsageError, build_settings
from etl.sources.folder import FolderSource
from etl.sources.listfile import ListSource, looks_like_list, parse_line, read_label_names, read_list

from .conftest import run_cli
from .test_end_to_end import all_records


def write_list(path: Path, pairs: list[tuple[str, int]], eol: str = "\n") -> Path:
    path.write_text("".join(f"{p} {label}{eol}" for p, label in pairs), encoding="utf-8")
    return path


def folder_pairs(root: Path) -> list[tuple[str, int]]:
    """The pairs a class-folder conversion of root would have, in its order (classes in byte order)."""
    return [(p, label) for label, files in enumerate(FolderSource(str(root)).classes().values()) for p in files]


def records(out: Path, split: str) -> list[tuple[bytes, bytes]]:
    return all_records(out / f"{split}_db")


def settings(**values):
    return build_settings({"workers": 2, **{k: str(v) if isinstance(v, Path) else v for k, v in values.items()}})


@pytest.mark.quick
@pytest.mark.parametrize("line, expected", [
    ("n01440764/n01440764_10026.JPEG 0", ("n01440764/n01440764_10026.JPEG", 0)),
    ("a folder/my photo 2.jpg 65", ("a folder/my photo 2.jpg", 65)),
    ("tabbed.jpg\t7", ("tabbed.jpg", 7)),
    ("trailing.jpg 3   ", ("trailing.jpg", 3)),
    ("no_label.jpg", "no label after the path (expected 'path label')"),
    ("x.jpg cat", "the label 'cat' is not a whole number"),
    ("x.jpg 1.5", "the label '1.5' is not a whole number"),
    ("x.jpg -1", "the label -1 is negative"),
    ("x.jpg \u0663", "the label '\u0663' is not a whole number"),  # an Arabic-Indic 3: int() would read it
    ("x.jpg 1\u0661", "the label '1\u0661' is not a whole number"),
    ("x.jpg \uff13", "the label '\uff13' is not a whole number"),  # a full-width 3
])
def test_a_line_is_a_path_and_the_number_after_its_last_space(line, expected):
    assert parse_line(line) == expected


@pytest.mark.quick
def test_a_bad_line_stops_with_its_number_and_blank_lines_are_ignored(tmp_path):
    listed = read_list(str(write_list(tmp_path / "ok.txt", [("a.jpg", 0), ("b c.jpg", 1)], eol="\r\n\n")))
    assert list(listed) == [("a.jpg", 0), ("b c.jpg", 1)] and listed.lines == [1, 3]
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 0\n\nb.jpg\n")
    with pytest.raises(UsageError, match=r"bad.txt line 3: no label"):
        read_list(str(bad))


@pytest.mark.quick
def test_lists_are_told_from_other_files(tmp_path):
    write_list(tmp_path / "train.txt", [("a.jpg", 0)])
    (tmp_path / "synsets.txt").write_text("n01440764\nn01443537\n")
    (tmp_path / "image.jpg").write_bytes(b"\xff\xd8\xff\xe0\0\x10JFIF\0")
    assert looks_like_list(str(tmp_path / "train.txt"))
    assert not looks_like_list(str(tmp_path / "synsets.txt"))
    assert not looks_like_list(str(tmp_path / "image.jpg"))
    assert not looks_like_list(str(tmp_path))


@pytest.mark.quick
def test_labels_files_in_every_form(tmp_path):
    words = tmp_path / "synset_words.txt"
    words.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    assert read_label_names(str(words)) == ["n01440764", "n01443537"]
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("n01440764\nn01443537\n\n")
    assert read_label_names(str(synsets)) == ["n01440764", "n01443537"]
    digits = tmp_path / "labels.txt"
    digits.write_text("golden retriever\ntabby cat\n")  # DIGITS' names may hold spaces: the whole line
    assert read_label_names(str(digits)) == ["golden retriever", "tabby cat"]
    gap = tmp_path / "gap.txt"
    gap.write_text("a\n\nb\n")
    with pytest.raises(UsageError, match="line 2 is blank"):
        read_label_names(str(gap))


def test_a_list_of_a_folder_converts_to_the_same_dataset_as_the_folder(small_tree, tmp_path):
    train = small_tree / "train"
    listed = write_list(tmp_path / "train.txt", folder_pairs(train))
    names = tmp_path / "synsets.txt"
    names.write_text("".join(f"{c}\n" for c in FolderSource(str(train)).classes()))
    common = {"val_pct": 20.0}
    convert(settings(train_dir=listed, out_dir=tmp_path / "a", root=train, labels=names, **common), progress=False)
    convert(settings(train_dir=train, out_dir=tmp_path / "b", **common), progress=False)
    for split in ("train", "val"):
        assert records(tmp_path / "a", split) == records(tmp_path / "b", split)
        assert records(tmp_path / "a", split)
    for name in ("labels.txt", "train.txt", "val.txt", "mean.binaryproto"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert not verify(str(tmp_path / "a")).problems


def _caffe_layout(small_tree: Path, tmp_path: Path) -> tuple[Path, Path, list[tuple[str, int]], list[str]]:
    """Caffe's ImageNet example: train.txt of class/file paths; val.txt of flat names in another folder."""
    train = small_tree / "train"
    pairs = [(p, label) for p, label in folder_pairs(train) if p.lower().endswith((".jpeg", ".jpg"))]
    flat = tmp_path / "val_flat"
    flat.mkdir()
    val_pairs = []
    for n, (p, label) in enumerate(folder_pairs(small_tree / "val"), 1):
        name = f"ILSVRC2012_val_{n:08d}.JPEG"
        shutil.copy(small_tree / "val" / p, flat / name)
        val_pairs.append((name, label))
    write_list(tmp_path / "train.txt", pairs)
    write_list(tmp_path / "val.txt", val_pairs)
    return train, flat, val_pairs, list(FolderSource(str(train)).classes())


def test_caffe_train_and_val_lists_with_roots_and_synset_words(small_tree, tmp_path):
    train, flat, val_pairs, classes = _caffe_layout(small_tree, tmp_path)
    words = tmp_path / "synset_words.txt"
    words.write_text("".join(f"{c} some words, more words\n" for c in classes))
    out = tmp_path / "out"
    # in a child process: `etl convert` forks its workers, which this process (it ran OpenCV) must not
    done = run_cli("convert", str(tmp_path / "train.txt"), str(out), "--root", str(train), "--labels", str(words),
                   "--val", str(tmp_path / "val.txt"), "--val-root", str(flat), "--workers", "2", "--quiet")
    assert done.returncode == 0, done.stderr
    assert (out / "labels.txt").read_text().split() == classes
    val_lines = (out / "val.txt").read_text().splitlines()
    assert sorted(line.rsplit(" ", 1)[0] for line in val_lines) == sorted(str(flat / p) for p, _ in val_pairs)
    by_path = dict(val_pairs)
    assert all(int(label) == by_path[Path(p).name] for p, label in (line.rsplit(" ", 1) for line in val_lines))
    assert not verify(str(out)).problems


def test_without_labels_the_numbers_are_the_names_and_never_renumbered(small_tree, tmp_path):
    train = shutil.copytree(small_tree / "train", tmp_path / "train")
    pairs = [(p, label * 3 + 2) for p, label in folder_pairs(train)]  # labels 2, 5, 8: gaps kept
    out = tmp_path / "out"
    report = convert(settings(train_dir=write_list(train / "gappy.txt", pairs), out_dir=out, val_pct=0.0),
                     progress=False)  # paths relative to the list's own folder
    assert (out / "labels.txt").read_text().split() == [str(n) for n in range(9)]
    counts = report["splits"]["train"]["per_class"]
    assert {name for name, n in counts.items() if n} == {"2", "5", "8"}
    assert sum(counts.values()) == report["splits"]["train"]["written"] == len(pairs)


def test_paths_relative_to_the_lists_folder_absolute_paths_and_spaces(tmp_path, small_tree):
    src = next(p for p in (small_tree / "train").rglob("*.JPEG"))
    (tmp_path / "my images").mkdir()
    shutil.copy(src, tmp_path / "my images" / "a photo.JPEG")
    shutil.copy(src, tmp_path / "elsewhere.JPEG")
    listed = write_list(tmp_path / "my images" / "list.txt", [("a photo.JPEG", 0), (str(tmp_path / "elsewhere.JPEG"),
                                                                                    1)])
    out = tmp_path / "out"
    report = convert(settings(train_dir=listed, out_dir=out, val_pct=0.0, shuffle=False), progress=False)
    assert report["splits"]["train"]["written"] == 2
    assert (out / "train.txt").read_text().splitlines() == ["a photo.JPEG 0", f"{tmp_path / 'elsewhere.JPEG'} 1"]


def test_no_shuffle_keeps_the_lists_order_and_the_seed_shuffles_it(small_tree, tmp_path):
    train = small_tree / "train"
    pairs = list(reversed(folder_pairs(train)))
    listed = write_list(tmp_path / "train.txt", pairs)
    kept = tmp_path / "kept"
    convert(settings(train_dir=listed, out_dir=kept, root=train, val_pct=0.0, shuffle=False), progress=False)
    written = [line.rsplit(" ", 1)[0] for line in (kept / "train.txt").read_text().splitlines()]
    assert written == [str(train / p) for p, _ in pairs]
    shuffled = tmp_path / "shuffled"
    convert(settings(train_dir=listed, out_dir=shuffled, root=train, val_pct=0.0), progress=False)
    lines = (shuffled / "train.txt").read_text().splitlines()
    assert sorted(lines) == sorted((kept / "train.txt").read_text().splitlines()) and lines != written


def test_a_missing_file_is_skipped_and_reported_or_stops_the_run_under_strict_list(small_tree, tmp_path):
    train = small_tree / "train"
    pairs = folder_pairs(train)[:6] + [("gone/missing.JPEG", 1)]
    listed = write_list(tmp_path / "train.txt", pairs)
    out = tmp_path / "out"
    report = convert(settings(train_dir=listed, out_dir=out, root=train, val_pct=0.0), progress=False)
    skipped = report["splits"]["train"]["skipped"]
    assert skipped == 1 and "gone/missing.JPEG" in json.dumps(report)
    strict = tmp_path / "strict"
    with pytest.raises(UsageError, match=r"train.txt line 7: .*missing.JPEG is not a file \(--strict-list\)"):
        convert(settings(train_dir=listed, out_dir=strict, root=train, strict_list=True), progress=False)
    assert not (strict / "train_db").exists()


def test_bad_lists_and_misplaced_options_stop_before_any_work(small_tree, tmp_path, capsys):
    train = small_tree / "train"
    names = tmp_path / "synsets.txt"
    names.write_text("a\nb\n")
    listed = write_list(tmp_path / "train.txt", [("x.jpg", 0), ("y.jpg", 2)])
    out = tmp_path / "out"
    cases = [
        (["convert", str(listed), str(out), "--labels", str(names)], "train.txt line 2: label 2 is outside"),
        (["convert", str(train), str(out), "--root", str(train)], "--root is the folder a list file's paths are"),
        (["convert", str(train), str(out), "--labels", str(names)], "TRAIN is not a list file"),
        (["convert", str(listed), str(out), "--root", str(tmp_path / "nope")], "--root folder not found"),
        (["convert", str(listed), str(out), "--val", str(train)], "--val takes a list file too"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not (out / "train_db").exists()


def test_min_per_class_drops_a_class_without_renumbering_the_others(small_tree, tmp_path):
    train = small_tree / "train"
    pairs = folder_pairs(train)
    few = [(p, label) for p, label in pairs if label != 1] + [(p, 1) for p, label in pairs if label == 1][:2]
    listed = write_list(tmp_path / "train.txt", few)
    report = convert(settings(train_dir=listed, out_dir=tmp_path / "out", root=train, min_per_class=3, val_pct=0.0),
                     progress=False)
    assert {name for name, n in report["splits"]["train"]["per_class"].items() if n} == {"0", "2"}
    assert "class '1' dropped" in json.dumps(report)


def test_a_changed_list_is_a_different_job_on_resume(small_tree, tmp_path):
    train = small_tree / "train"
    pairs = folder_pairs(train)
    listed = write_list(tmp_path / "train.txt", pairs)
    out = tmp_path / "out"
    convert(settings(train_dir=listed, out_dir=out, root=train), progress=False)
    write_list(listed, pairs[:-1])
    with pytest.raises(UsageError, match="resume"):
        convert(settings(train_dir=listed, out_dir=out, root=train, resume=True), progress=False)


@pytest.mark.quick
def test_the_source_gives_its_pairs_in_list_order(tmp_path):
    listed = write_list(tmp_path / "l.txt", [("b.jpg", 1), ("a.jpg", 0), ("c.jpg", 1)])
    source = ListSource(str(listed))
    assert list(source.pairs()) == [("b.jpg", 1), ("a.jpg", 0), ("c.jpg", 1)]
    assert source.classes() == {"0": ["a.jpg"], "1": ["b.jpg", "c.jpg"]}
    assert source.reader().where("a.jpg") == str(tmp_path / "a.jpg")


@pytest.mark.quick
def test_a_byte_order_mark_and_labels_beyond_int32(tmp_path):
    listed = tmp_path / "l.txt"
    listed.write_bytes(b"\xef\xbb\xbfa.jpg 0\nb.jpg 1\n")
    assert list(read_list(str(listed))) == [("a.jpg", 0), ("b.jpg", 1)] and looks_like_list(str(listed))
    words = tmp_path / "synset_words.txt"
    words.write_bytes(b"\xef\xbb\xbfn01440764 tench, Tinca tinca\n")
    assert read_label_names(str(words)) == ["n01440764"]
    assert parse_line("a.jpg 2147483648") == "the label 2147483648 is more than a Datum's label holds (2147483647)"


def test_lists_the_output_would_overwrite_and_a_val_list_with_a_folder_are_refused(small_tree, tmp_path, capsys):
    train = small_tree / "train"
    listed = write_list(tmp_path / "train.txt", folder_pairs(train))
    assert main(["convert", str(listed), str(tmp_path), "--root", str(train)]) == 2
    assert "is where etl writes its own train.txt" in capsys.readouterr().err
    assert main(["convert", str(train), str(tmp_path / "o"), "--val", str(listed)]) == 2
    assert "is a list file, which goes with a list TRAIN" in capsys.readouterr().err
    assert listed.read_text().count("\n") == len(folder_pairs(train))


def test_a_label_too_large_for_labels_txt_names_its_line(tmp_path, capsys):
    listed = tmp_path / "l.txt"
    listed.write_text("a.jpg 0\nb.jpg 5000000\n")
    assert main(["convert", str(listed), str(tmp_path / "o")]) == 2
    assert "l.txt line 2: label 5000000 would make labels.txt 5,000,001 lines long" in capsys.readouterr().err
