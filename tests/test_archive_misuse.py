"""Archives used the way users misuse them (issue 21): a partly downloaded tar, class tars beside sub-folders, a
tar nested in a class tar, a class tar twice, a compressed class tar, hard links, a damaged saved index. Each
gives what `tar -x` and the recipe give, or says what it left out."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from etl.errors import UsageError
from etl.sources import tarindex
from etl.sources.archive import NESTED_NOTE, UNLINKED_NOTE, ArchiveSource, TarFolderSource
from etl.sources.tarscan import RECORD, TAIL_SLACK

from .conftest import run_cli
from .test_archives import (
    OUTPUTS,
    Member,
    class_tar,
    convert,
    data_offsets,
    image,
    info,
    notes,
    refused,
    report,
    tar_bytes,
    write_tar,
)
from .test_end_to_end import all_records

FOUR = [class_tar(f"n{c}", 3, 10 * c) for c in range(4)]


def tar_folder(folder: Path, tars: list[tuple[str, bytes]]) -> Path:
    """A folder of class tars, as the recipe's downloads leave it before extraction."""
    folder.mkdir()
    for name, data in tars:
        (folder / name).write_bytes(data)
    return folder


def dataset(out: Path) -> dict[str, object]:
    """What a train-only conversion's consumers read: every record, the labels and the means."""
    return {"train_db": all_records(out / "train_db"), **{name: (out / name).read_bytes() for name in OUTPUTS}}


def zeroed(data: bytes, start: int, stop: int) -> bytes:
    """The bytes with [start, stop) zeros: the pieces a torrent client has not downloaded yet."""
    return data[:start] + bytes(stop - start) + data[stop:]


def folder_of(root: Path, files: dict[str, bytes]) -> Path:
    """A class-folder tree: class/name -> bytes."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def class_files(members: list[Member]) -> dict[str, bytes]:
    """What the recipe leaves of class tars: <class>/<image> for each image member of each class tar."""
    files = {}
    for name, data in members:  # type: ignore[misc]
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.endswith(".JPEG"):
                    files[f"{name[:-4]}/{m.name}"] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return files


def the_advice(line: str) -> str:
    """The shell command a refusal gives, between its parentheses."""
    found = re.search(r"\((mkdir .*?|cd .*?; done)\),", line)
    assert found, line
    return found[1]


# ------------------------------------------------------------------------------------- 1. partly downloaded

def test_a_hole_of_zeros_in_the_train_tar_is_an_incomplete_archive_not_its_end(tmp_path):
    data = tar_bytes(FOUR)
    at = data_offsets(data)
    train = tmp_path / "pre.tar"
    train.write_bytes(zeroed(data, at["n1.tar"] - 512, at["n2.tar"] - 512))  # n1 not downloaded yet
    out = tmp_path / "out"
    convert(train, out, "--val-pct", "0")
    assert list(report(out)["splits"]["train"]["per_class"]) == ["n0"]
    said = notes(out)
    assert "incomplete archive: pre.tar stops early" in said and "partly downloaded" in said, said
    assert "usable: its 1 member before that point" in said, said
    line = refused(train, tmp_path / "out2", "--val-pct", "0", "--on-error", "fail")
    assert "incomplete archive" in line and "pre.tar" in line, line


def test_a_hole_inside_a_class_tar_is_named_with_what_of_it_is_used(tmp_path):
    name, inner = class_tar("n1", 3, 10)
    at = data_offsets(inner)
    inner = zeroed(inner, at["n1_11.JPEG"] - 512, at["n1_12.JPEG"] - 512)  # its second image never came
    source = ArchiveSource(str(write_tar(tmp_path / "train.tar", [FOUR[0], (name, inner), FOUR[2]])))
    assert {c: len(p) for c, p in source.classes().items()} == {"n0": 3, "n1": 1, "n2": 3}
    said = "\n".join(source.notes())
    assert "incomplete archive: n1.tar stops early" in said and "its 1 image before that point" in said, said


@pytest.mark.parametrize("kind", ["train tar", "folder of class tars", "val tar"])
def test_a_missing_tail_of_zeros_is_an_incomplete_archive(tmp_path, kind):
    """A file at full size whose last pieces are still zeros: more zeros than a tar's padding."""
    if kind == "val tar":
        data = tar_bytes([(f"ILSVRC2012_val_{i:08d}.JPEG", image(i)) for i in range(1, 4)])
    else:
        data = tar_bytes(FOUR)
    path = tmp_path / ("n0.tar" if kind == "folder of class tars" else "in.tar")
    path.write_bytes(data + bytes(RECORD))  # one record more than tar's padding
    source = TarFolderSource(str(tmp_path)) if kind == "folder of class tars" else ArchiveSource(str(path))
    source.classes()
    assert any(n.startswith("incomplete archive") and "partly downloaded" in n for n in source.notes()), \
        source.notes()


@pytest.mark.parametrize("end", ["padded to its record", "its two end blocks only"])
def test_a_tar_padded_to_its_record_with_zeros_is_whole(tmp_path, end):
    data = tar_bytes(FOUR)  # tarfile, as tar: two zero blocks, then zeros to a whole 10 KiB record
    last = tarfile.open(fileobj=io.BytesIO(data)).getmembers()[-1]
    path = tmp_path / "in.tar"
    path.write_bytes(data if end == "padded to its record" else data[:last.offset_data + last.size + 1024])
    source = ArchiveSource(str(path))
    assert len(source.classes()) == 4 and source.notes() == []


def class_tars_zeroed_from(data: bytes, member: str) -> bytes:
    """A tar at full size with zeros from member's header to its end: its last pieces not downloaded yet."""
    at = data_offsets(data)[member] - 512
    return zeroed(data, at, len(data))


@pytest.mark.parametrize("where", ["train tar", "class tar", "tar of class folders"])
def test_zeros_to_the_end_past_a_records_padding_are_an_incomplete_archive(tmp_path, where):
    """Less than 1 MiB of zeros: the last members' headers gone. Only tar's padding to 10 KiB may follow the end."""
    if where == "class tar":  # the outer tar whole, the class tar (two 10 KiB records) zeros from its 4th image
        name, inner = class_tar("n3", 12, 30)
        members = [*FOUR[:3], (name, class_tars_zeroed_from(inner, "n3_33.JPEG"))]
        data, lost = tar_bytes(members), "n3.tar stops early"
    elif where == "train tar":
        data, lost = class_tars_zeroed_from(tar_bytes(FOUR), "n3.tar"), "in.tar stops early"
    else:
        files = [(path, data) for path, data in class_files(FOUR).items()]
        data, lost = class_tars_zeroed_from(tar_bytes(files), files[5][0]), "in.tar stops early"
    path = tmp_path / "in.tar"
    path.write_bytes(data)
    said = "\n".join(ArchiveSource(str(path)).notes())
    assert f"incomplete archive: {lost}" in said and "partly downloaded" in said, said
    line = refused(path, tmp_path / "out", "--val-pct", "0", "--on-error", "fail")
    assert lost in line, line


def test_a_val_tar_with_zeros_to_its_end_is_incomplete_and_stops_a_fail_run(tmp_path):
    val = tar_bytes([(f"ILSVRC2012_val_{i:08d}.JPEG", image(i)) for i in range(1, 13)])  # two 10 KiB records
    (tmp_path / "val.tar").write_bytes(class_tars_zeroed_from(val, "ILSVRC2012_val_00000005.JPEG"))
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG n{i % 2}\n" for i in range(1, 7)))
    train = write_tar(tmp_path / "train.tar", FOUR[:2])
    args = ("--val", tmp_path / "val.tar", "--val-labels", labels)
    out = tmp_path / "out"
    convert(train, out, *args)
    assert "val: incomplete archive: val.tar stops early" in notes(out), notes(out)
    line = refused(train, tmp_path / "out2", *args, "--on-error", "fail")
    assert "incomplete archive: val.tar stops early" in line, line


# ------------------------------------------------------------------------- 2. class tars beside sub-folders

def test_empty_sub_folders_beside_class_tars_are_named_and_the_tars_converted(tmp_path):
    folder = tmp_path / "train"
    (folder / "lost+found").mkdir(parents=True)
    for name, data in FOUR[:2]:
        (folder / name).write_bytes(data)
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "notes-checkpoint.ipynb").write_text("{}")
    out = tmp_path / "out"
    convert(folder, out, "--val-pct", "0")
    assert list(report(out)["splits"]["train"]["per_class"]) == ["n0", "n1"]
    assert "2 sub-folders beside the class tars left out: no images in them that etl can list" in notes(out), notes(out)


def test_class_tars_beside_class_folders_are_refused_naming_both_and_the_advice_works(tmp_path):
    folder = tmp_path / "my train"
    extracted = class_files(FOUR)
    folder.mkdir()
    for name, data in FOUR[:2]:  # a recipe stopped half-way: n0 and n1 still tars, n1 half extracted,
        (folder / name).write_bytes(data)
    folder_of(folder, {k: v for k, v in extracted.items() if k.startswith(("n2/", "n3/")) or k == "n1/n1_10.JPEG"})
    line = refused(folder, tmp_path / "out", "--val-pct", "0")  # n2 and n3 extracted (their tars removed)
    assert "class tars (n0.tar and 1 more)" in line and "sub-folders of images (n1/ and 2 more)" in line, line
    subprocess.run(["bash", "-c", the_advice(line)], check=True)
    out, want = tmp_path / "out", tmp_path / "want"
    convert(folder, out, "--val-pct", "0")
    convert(folder_of(tmp_path / "whole", extracted), want, "--val-pct", "0")
    assert dataset(out) == dataset(want)


# ------------------------------------------------------------------------------ 3. a tar in a class tar

def test_a_tar_nested_in_a_class_tar_is_left_out_in_both_forms_alike(tmp_path):
    backup = tar_bytes([(f"n1_{k}.JPEG", image(40 + k)) for k in range(2)])
    classes = [("n0.tar", tar_bytes([("n0_1.JPEG", image(1)), ("n0_2.JPEG", image(2)), ("backup.tar", backup)])),
               class_tar("n1", 2, 20)]
    train = write_tar(tmp_path / "train.tar", classes)
    folder = tar_folder(tmp_path / "tars", classes)
    from_tar, from_folder = tmp_path / "a", tmp_path / "b"
    convert(train, from_tar, "--val-pct", "0")
    convert(folder, from_folder, "--val-pct", "0")
    assert dataset(from_tar) == dataset(from_folder)
    assert report(from_tar)["splits"]["train"]["per_class"]["n0"] == 2
    for out in (from_tar, from_folder):
        assert f"1 archive member left out: {NESTED_NOTE} (e.g. 'n0.tar/backup.tar')" in notes(out), notes(out)


# ------------------------------------------------------------------------------- 4. a class tar twice

def test_a_class_tar_present_twice_keeps_the_last_copy_as_tar_x_does(tmp_path):
    old = tar_bytes([("x.JPEG", image(1)), ("y.JPEG", image(2))])
    new = tar_bytes([("x.JPEG", image(5)), ("z.JPEG", image(6))])
    train = write_tar(tmp_path / "train.tar", [("a.tar", old), class_tar("b", 2), ("a.tar", new)])  # tar rf
    want_tree = folder_of(tmp_path / "tree", {"a/x.JPEG": image(5), "a/z.JPEG": image(6),
                                              **class_files([class_tar("b", 2)])})
    out, want = tmp_path / "out", tmp_path / "want"
    convert(train, out, "--val-pct", "0")
    convert(want_tree, want, "--val-pct", "0")
    assert dataset(out) == dataset(want)
    said = notes(out)
    assert "a.tar is in the archive more than once: the last copy is used" in said, said
    assert "2 images of an earlier copy left out" in said and "duplicate" not in said, said


# ------------------------------------------------------------------------ 5. a compressed class tar inside

def test_a_compressed_class_tar_inside_the_train_tar_is_refused_and_the_advice_works(tmp_path):
    members = [class_tar("a", 2), ("b.tar.gz", gzip.compress(class_tar("b", 2, 5)[1])), class_tar("c", 2, 9)]
    train = write_tar(tmp_path / "my data" / "train.tar", members)  # the advice quotes the path's space
    line = refused(train, tmp_path / "out")
    assert "b.tar.gz, a gzip-compressed archive" in line and "gunzip" in line, line
    subprocess.run(["bash", "-c", the_advice(line)], check=True)
    out, want = tmp_path / "out", tmp_path / "want"
    convert(tmp_path / "my data" / "train_classes", out, "--val-pct", "0")
    convert(folder_of(tmp_path / "tree", class_files([class_tar("a", 2), class_tar("b", 2, 5),
                                                      class_tar("c", 2, 9)])), want, "--val-pct", "0")
    assert dataset(out) == dataset(want)


def test_a_compressed_class_tar_in_a_folder_is_decompressed_in_its_place_by_the_advice(tmp_path):
    folder = tmp_path / "tars"
    folder.mkdir()
    (folder / "a.tar").write_bytes(class_tar("a", 2)[1])
    (folder / "b.tar.gz").write_bytes(gzip.compress(class_tar("b", 2, 5)[1]))
    line = refused(folder, tmp_path / "out", "--val-pct", "0")
    command = re.search(r"\((gunzip [^)]*)\)", line)
    assert command, line
    subprocess.run(["bash", "-c", command[1]], check=True)
    convert(folder, tmp_path / "out", "--val-pct", "0")  # not refused again for a copy left beside it


# ---------------------------------------------------------------------------------------- 6. hard links

@pytest.mark.parametrize("form", ["train tar", "folder of class tars"])
def test_hard_links_are_read_as_their_targets_bytes(tmp_path, form):
    inner = tar_bytes([("./x.JPEG", image(1)), ("y.JPEG", image(2)), info("h.JPEG", tarfile.LNKTYPE, "x.JPEG"),
                       info("l.JPEG", tarfile.LNKTYPE, "gone.JPEG")])
    if form == "train tar":
        train = write_tar(tmp_path / "train.tar", [("a.tar", inner), info("b.tar", tarfile.LNKTYPE, "a.tar")])
        want_files = {f"{c}/{n}": image(k) for c in "ab" for n, k in (("x.JPEG", 1), ("y.JPEG", 2), ("h.JPEG", 1))}
    else:
        train = tmp_path / "tars"
        train.mkdir()
        (train / "a.tar").write_bytes(inner)
        want_files = {f"a/{n}": image(k) for n, k in (("x.JPEG", 1), ("y.JPEG", 2), ("h.JPEG", 1))}
    out, want = tmp_path / "out", tmp_path / "want"
    convert(train, out, "--val-pct", "0")
    convert(folder_of(tmp_path / "tree", want_files), want, "--val-pct", "0")
    assert dataset(out) == dataset(want)
    unlinked = "2 archive members" if form == "train tar" else "1 archive member"  # a.tar's, and b.tar's
    assert f"{unlinked} left out: {UNLINKED_NOTE} (e.g. 'a.tar/l.JPEG')" in notes(out), notes(out)


def test_the_saved_index_carries_a_hard_link_as_its_targets_bytes(tmp_path):
    inner = tar_bytes([("x.JPEG", image(1)), info("h.JPEG", tarfile.LNKTYPE, "x.JPEG")])
    train = write_tar(tmp_path / "train.tar", [("a.tar", inner)])
    source = ArchiveSource(str(train))
    source.classes()
    source.save(tmp_path)
    back = ArchiveSource(str(train), saved=tmp_path)
    assert back.locate("a.tar/h.JPEG") == back.locate("a.tar/x.JPEG") == source.locate("a.tar/x.JPEG")


# ---------------------------------------------------------------------------- the saved index read back

def resaved(folder: Path, train: Path, **changes: object) -> None:
    """The saved index of train with its meta's fields changed (as a damaged or edited file would hold)."""
    path = folder / tarindex.saved_name(str(train))
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta.update(changes)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("damage", ["groups", "files", "notes", "meta", "empty", "arrays"])
def test_a_saved_index_of_the_wrong_type_or_shape_is_named_as_damaged(tmp_path, damage):
    train = write_tar(tmp_path / "train.tar", [class_tar("a", 2), class_tar("b", 2)])
    source = ArchiveSource(str(train))
    source.classes()
    source.save(tmp_path)
    path = tmp_path / tarindex.saved_name(str(train))
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "meta":
        with np.load(path) as saved:
            arrays = {k: saved[k] for k in saved.files}
        arrays["meta"] = np.frombuffer(b"[1, 2]", np.uint8)
        np.savez(path.open("wb"), **arrays)
    elif damage == "arrays":
        with np.load(path) as saved:
            arrays = {k: saved[k] for k in saved.files}
        arrays["sizes"] = arrays["sizes"][:1]
        np.savez(path.open("wb"), **arrays)
    else:
        resaved(tmp_path, train, **{damage: "x" if damage != "files" else [1]})
    with pytest.raises(UsageError, match=re.escape(f"the saved archive index {path} is damaged")) as caught:
        ArchiveSource(str(train), saved=tmp_path).classes()
    assert "rm " in str(caught.value) and "\n" not in str(caught.value)


# ------------------------------------------------------------------------------- what a file is instead

@pytest.mark.parametrize(("content", "said"), [
    (b"", "it is an empty file"),
    (b"\n\n", "it is an empty list, only blank lines"),
    (bytes(10240), "it is an empty tar"),
    (bytes(TAIL_SLACK + 10240), "it starts with zeros where a tar header should be: a partly downloaded file?"),
    (tar_bytes(FOUR)[:300], "it is 300 bytes, less than one tar header"),
    (b"hello world\n", "it is a text file whose first line 'hello world' is not 'path label'"),
])
def test_an_input_no_kind_takes_is_said_for_what_it_is(tmp_path, content, said):
    train = tmp_path / "in"
    train.write_bytes(content)
    line = refused(train, tmp_path / "out")
    assert said in line and str(train) in line, line


def test_a_fifo_given_as_input_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "in"
    os.mkfifo(fifo)
    line = refused(fifo, tmp_path / "out")  # opening it to look would block: the run would never end
    assert "it is not a regular file" in line, line


def test_a_tar_cut_before_its_first_class_says_so(tmp_path):
    train = tmp_path / "train.tar"
    train.write_bytes(tar_bytes(FOUR)[:1500])
    line = refused(train, tmp_path / "out")
    assert "no images found" in line and "incomplete archive: train.tar stops early" in line, line


# ------------------------------------------------------------------------- round 3: what the tester found

def test_a_class_folder_linked_to_nothing_is_named_and_stops_a_fail_run(tmp_path):
    tree = folder_of(tmp_path / "train", class_files(FOUR[:3]))
    (tree / "n3").symlink_to("/mnt/notmounted/n3")  # a class folder on a disk not mounted
    out = tmp_path / "out"
    convert(tree, out, "--val-pct", "0")
    assert f"links to nothing: 1 link left out, whose target does not exist (e.g. {tree}/n3 -> /mnt/notmounted/n3)" \
        in notes(out), notes(out)
    line = refused(tree, tmp_path / "out2", "--val-pct", "0", "--on-error", "fail")
    assert f"{tree}/n3 -> /mnt/notmounted/n3" in line, line


def test_links_to_nothing_in_a_flat_val_folder_are_named_and_stop_a_fail_run(tmp_path):
    train = folder_of(tmp_path / "train", class_files(FOUR[:2]))
    val = folder_of(tmp_path / "val", {f"ILSVRC2012_val_{i:08d}.JPEG": image(i) for i in range(1, 5)})
    (val / "more").symlink_to("/mnt/notmounted/val")  # the rest of the val set, on a disk not mounted
    (val / "part2.tar").symlink_to("/nonexistent/part2.tar")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG n{i % 2}\n" for i in range(1, 5)))
    args = ("--val", val, "--val-labels", labels)
    out = tmp_path / "out"
    convert(train, out, *args)
    assert report(out)["splits"]["val"]["written"] == 4
    assert (f"val: links to nothing: 2 links left out, whose target does not exist (e.g. {val}/more -> "
            "/mnt/notmounted/val)") in notes(out), notes(out)
    line = refused(train, tmp_path / "out2", *args, "--on-error", "fail")
    assert f"{val}/more -> /mnt/notmounted/val" in line, line


def test_a_folder_of_class_tars_names_a_partial_download_and_a_link_to_nothing(tmp_path):
    folder = tar_folder(tmp_path / "tars", FOUR[:2])
    (folder / "n2.tar.part").write_bytes(FOUR[2][1])  # the recipe's *.tar loop skips it
    (folder / "n3.tar").symlink_to("/nonexistent/n3.tar")
    out = tmp_path / "out"
    convert(folder, out, "--val-pct", "0")
    assert list(report(out)["splits"]["train"]["per_class"]) == ["n0", "n1"]
    said = notes(out)
    assert "incomplete archive: n2.tar.part is a download not finished" in said, said
    assert f"{folder}/n3.tar -> /nonexistent/n3.tar" in said, said
    (folder / "n2.tar.part").unlink()
    line = refused(folder, tmp_path / "out2", "--val-pct", "0", "--on-error", "fail")
    assert f"{folder}/n3.tar -> /nonexistent/n3.tar" in line, line


@pytest.mark.parametrize("name", ["n3.tar.gz", "n3.tgz", "n3.zip", "n3.tar.part"])
def test_an_archive_beside_class_folders_is_named_with_advice_of_its_own_kind_that_works(tmp_path, name):
    tree = folder_of(tmp_path / "my train", class_files(FOUR[:3]))
    one = folder_of(tmp_path / "one", class_files(FOUR[3:]))
    if name.endswith(".zip"):
        subprocess.run(["zip", "-qr", str(tree / name), "."], cwd=one / "n3", check=True)
    else:
        (tree / name).write_bytes(gzip.compress(FOUR[3][1]) if "gz" in name else FOUR[3][1])
    line = refused(tree, tmp_path / "out", "--val-pct", "0", "--on-error", "fail")
    assert f"archives beside the class folders left out: {name}" in line, line
    if name.endswith(".part"):
        assert "an incomplete download" in line, line
        return
    subprocess.run(["bash", "-c", re.search(r"\((cd .*?)\), or move it out", line)[1]], check=True)
    out, want = tmp_path / "out", tmp_path / "want"
    convert(tree, out, "--val-pct", "0")
    convert(folder_of(tmp_path / "whole", class_files(FOUR)), want, "--val-pct", "0")
    assert dataset(out) == dataset(want) and report(out)["notes"] == []


@pytest.mark.parametrize("form", ["train tar", "folder of class tars"])
def test_a_gzip_class_tar_named_tar_gets_advice_gzip_accepts(tmp_path, form):
    members = [class_tar("a", 2), ("b.tar", gzip.compress(class_tar("b", 2, 5)[1]))]
    if form == "train tar":
        given = write_tar(tmp_path / "train.tar", members)
        line = refused(given, tmp_path / "out")
        subprocess.run(["bash", "-c", the_advice(line)], check=True)
        given = tmp_path / "train_classes"
    else:
        given = tmp_path / "tars"
        given.mkdir()
        for name, data in members:
            (given / name).write_bytes(data)
        line = refused(given, tmp_path / "out", "--val-pct", "0")
        subprocess.run(["bash", "-c", re.search(r"\((mv [^)]*)\)", line)[1]], check=True)
    assert "mv " in line and "b.tar.gz && gunzip" in line, line
    convert(given, tmp_path / "out", "--val-pct", "0")
    assert report(tmp_path / "out")["splits"]["train"]["per_class"] == {"a": 2, "b": 2}


def test_a_damaged_saved_index_advises_removing_it_and_the_resume_then_works(tmp_path):
    inner = tar_bytes([("x.JPEG", image(1)), ("bad.JPEG", b"\xff\xd8" + b"\x13" * 300)])
    train = write_tar(tmp_path / "train.tar", [("a.tar", inner), class_tar("b", 2)])
    out = tmp_path / "out"
    args = ("convert", str(train), str(out), "--val-pct", "0", "--workers", "1", "--chunk-size", "1", "--width",
            "24", "--height", "24", "--quiet")
    assert run_cli(*args, "--on-error", "fail").returncode == 1  # stopped at bad.JPEG: a run to resume
    saved = next((out / ".etl").glob("index.*.npz"))
    saved.write_bytes(b"junk")
    proc = run_cli(*args, "--resume")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--overwrite" not in proc.stderr, proc.stderr
    subprocess.run(["bash", "-c", re.search(r"\((rm [^)]*)\)", proc.stderr)[1]], check=True)
    assert run_cli(*args, "--resume").returncode == 0
    assert report(out)["splits"]["train"]["written"] == 3


@pytest.mark.parametrize("last", [b"", bytes(10240)], ids=["empty file", "empty tar"])
def test_a_class_tar_whose_last_copy_is_empty_gives_the_empty_class_tar_x_gives(tmp_path, last):
    train = write_tar(tmp_path / "train.tar", [*FOUR[:2], (FOUR[0][0], last)])
    out = tmp_path / "out"
    convert(train, out, "--val-pct", "0")
    assert list(report(out)["splits"]["train"]["per_class"]) == ["n1"]  # n0's folder is empty after tar -x
    said = notes(out)
    assert "n0.tar is in the archive more than once: the last copy (which holds no images) is used" in said, said


def test_a_hard_link_to_a_later_class_tar_stops_a_fail_run(tmp_path):
    train = write_tar(tmp_path / "train.tar", [info("n3.tar", tarfile.LNKTYPE, "n0.tar"), *FOUR[:3]])
    convert(train, tmp_path / "out", "--val-pct", "0")  # tar -x fails here too (exit 2)
    line = refused(train, tmp_path / "out2", "--val-pct", "0", "--on-error", "fail")
    assert f"{UNLINKED_NOTE} (e.g. 'n3.tar')" in line, line


def test_a_class_tar_not_named_tar_is_read_with_a_note(tmp_path):
    folder = tar_folder(tmp_path / "tars", FOUR[:2])
    (folder / "n2").write_bytes(FOUR[2][1])
    source = TarFolderSource(str(folder))
    assert list(source.classes()) == ["n0", "n1", "n2"]
    assert "1 class tar not named *.tar read as 1 class (e.g. 'n2';" in "\n".join(source.notes()), source.notes()
