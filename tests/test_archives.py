"""Archive inputs (a tar of class tars, a folder of class tars, a tar of class folders, a flat val tar or folder
with --val-labels): the same dataset as the extracted folders, and every kind of bad archive reported, never fatal
to the rest of the data."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from etl.sources.tarscan import scan_tar
from etl.sources.vallabels import (
    CAFFE,
    DEVKIT_TAR,
    DEVKIT_TAR_GZ,
    GROUND_TRUTH,
    KAGGLE,
    MAPPING,
    VALPREP,
    WNID_LINES,
)
from etl.synthilsvrc import IlsvrcSet, IlsvrcSpec, make_ilsvrc
from etl.words import plural

from .conftest import gradient, jpeg, run_cli
from .test_end_to_end import all_records

SMALL = ("--width", "24", "--height", "24", "--quiet")
OUTPUTS = ("labels.txt", "mean.binaryproto", "mean.jpg")


# ---------------------------------------------------------------------------------------------------- helpers

def convert(train: Path, out: Path, *extra: object, workers: int = 1) -> None:
    proc = run_cli("convert", str(train), str(out), *map(str, extra), "--workers", str(workers), *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def refused(train: Path, out: Path, *extra: object) -> str:
    """A run that must stop at once with one line (exit 2): that line."""
    proc = run_cli("convert", str(train), str(out), *map(str, extra), "--workers", "1", *SMALL)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (out / "train_db").exists()
    return proc.stderr.strip()


def dataset(out: Path) -> dict[str, object]:
    """Everything a conversion's consumers read: every record of both databases, labels and means."""
    found: dict[str, object] = {f"{split}_db": all_records(out / f"{split}_db") for split in ("train", "val")}
    found.update({name: (out / name).read_bytes() for name in OUTPUTS})
    return found


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def notes(out: Path) -> str:
    return "\n".join(report(out)["notes"])


def listed(out: Path, split: str = "train") -> list[str]:
    return [line.rsplit(" ", 1)[0] for line in (out / f"{split}.txt").read_text().splitlines()]


def expected_lists(reference: Path, out: Path, train_path: Callable[[str, str], str],
                   val_path: Callable[[str, str], str]) -> None:
    """out's list files are the reference's (made from the extracted folders: <root>/<wnid>/<file>), line for
    line, with each path as train_path/val_path(wnid, file) names it in the archive."""
    for split, path_of in (("train", train_path), ("val", val_path)):
        want = []
        for line in (reference / f"{split}.txt").read_text().splitlines():
            path, label = line.rsplit(" ", 1)
            wnid, name = Path(path).parts[-2:]
            want.append(f"{path_of(wnid, name)} {label}")
        assert (out / f"{split}.txt").read_text().splitlines() == want


def image(k: int) -> bytes:
    """A small JPEG, different for each k."""
    return jpeg(gradient(20 + k % 13, 16 + k % 7))


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname, member.size, member.mtime, member.mode = kind, link, size, 1336000000, 0o644
    return member


Member = tuple[str, bytes] | tarfile.TarInfo


def tar_bytes(members: list[Member], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """A tar of (name, data) files and ready TarInfos (directories, links), in this order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                tar.addfile(info(member[0], size=len(member[1])), io.BytesIO(member[1]))
    return buf.getvalue()


def write_tar(path: Path, members: list[Member], fmt: int = tarfile.GNU_FORMAT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tar_bytes(members, fmt))
    return path


def class_tar(wnid: str, count: int, first: int = 0) -> tuple[str, bytes]:
    return f"{wnid}.tar", tar_bytes([(f"{wnid}_{first + k}.JPEG", image(first + k)) for k in range(count)])


def data_offsets(data: bytes) -> dict[str, int]:
    """Each member's data offset in a tar, as tarfile finds it."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return {m.name: m.offset_data for m in tar.getmembers()}


# ---------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory) -> IlsvrcSet:
    return make_ilsvrc(tmp_path_factory.mktemp("ilsvrc"), IlsvrcSpec(classes=3, per_class=5, val_per_class=2, seed=5))


@pytest.fixture(scope="module")
def reference(ilsvrc, tmp_path_factory) -> Path:
    """The recipe's way: the extracted train folder, the val folder sorted into classes by valprep.sh."""
    out = tmp_path_factory.mktemp("reference") / "out"
    convert(ilsvrc.train_dir, out, "--val", ilsvrc.val_dir)
    return out


# ---------------------------------------------------------------------------------------------------- same data

@pytest.mark.parametrize(("form", "workers"), [
    (DEVKIT_TAR_GZ, 1), (DEVKIT_TAR_GZ, 2), (DEVKIT_TAR, 2), (GROUND_TRUTH, 1), (KAGGLE, 2), (VALPREP, 1),
    (CAFFE, 2), (MAPPING, 1), (WNID_LINES, 2)])
def test_the_downloads_give_the_dataset_of_the_extracted_folders(ilsvrc, reference, tmp_path, form, workers):
    out = tmp_path / "out"
    convert(ilsvrc.train_tar, out, "--val", ilsvrc.val_tar, "--val-labels", ilsvrc.labels[form], workers=workers)
    assert dataset(out) == dataset(reference)
    assert report(out)["notes"] == []
    expected_lists(reference, out, lambda wnid, name: f"{ilsvrc.train_tar}/{wnid}.tar/{name}",
                   lambda wnid, name: f"{ilsvrc.val_tar}/{name}")


def test_relative_paths_name_the_member_inside_the_archive(ilsvrc, reference, tmp_path):
    out = tmp_path / "out"
    convert(ilsvrc.train_tar, out, "--val", ilsvrc.val_tar, "--val-labels", ilsvrc.labels[MAPPING],
            "--relative-paths")
    assert dataset(out) == dataset(reference)
    expected_lists(reference, out, lambda wnid, name: f"{wnid}.tar/{name}", lambda wnid, name: name)


def test_a_folder_of_class_tars_and_a_flat_val_folder(ilsvrc, reference, tmp_path):
    tars, val = tmp_path / "train_tars", tmp_path / "val_flat"
    for archive, folder in ((ilsvrc.train_tar, tars), (ilsvrc.val_tar, val)):
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    out = tmp_path / "out"
    convert(tars, out, "--val", val, "--val-labels", ilsvrc.labels[VALPREP], workers=2)
    assert dataset(out) == dataset(reference)
    assert report(out)["notes"] == []
    expected_lists(reference, out, lambda wnid, name: f"{tars}/{wnid}.tar/{name}", lambda wnid, name: f"{val}/{name}")


def test_a_tar_of_class_folders_under_a_common_folder(ilsvrc, reference, tmp_path):
    files = sorted(ilsvrc.train_dir.rglob("*.JPEG"), key=lambda p: p.name, reverse=True)  # not in class order
    archive = write_tar(tmp_path / "train.tar", [(f"train/{p.parent.name}/{p.name}", p.read_bytes()) for p in files],
                        tarfile.PAX_FORMAT)
    out = tmp_path / "out"
    convert(archive, out, "--val", ilsvrc.val_tar, "--val-labels", ilsvrc.labels[KAGGLE])
    assert dataset(out) == dataset(reference)
    expected_lists(reference, out, lambda wnid, name: f"{archive}/train/{wnid}/{name}",
                   lambda wnid, name: f"{ilsvrc.val_tar}/{name}")


def test_verify_passes_on_a_dataset_made_from_archives(ilsvrc, tmp_path):
    out = tmp_path / "out"
    convert(ilsvrc.train_tar, out, "--val", ilsvrc.val_tar, "--val-labels", ilsvrc.labels[DEVKIT_TAR_GZ])
    proc = run_cli("verify", str(out), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------------- bad archives

def cut_train_tar(ilsvrc: IlsvrcSet, path: Path, keep: int) -> tuple[str, list[str]]:
    """A copy of the train tar cut half-way through the data of the last class tar's image number `keep`:
    (that class tar's name, the list paths every complete image should have)."""
    data = ilsvrc.train_tar.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as outer:
        members = outer.getmembers()
        last = members[-1]
        inner_bytes = outer.extractfile(last).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        images = inner.getmembers()
    cut = last.offset_data + images[keep].offset_data + images[keep].size // 2
    path.write_bytes(data[:cut])
    whole = [f"{path}/{m.name}/{p.name}" for m in members[:-1] for p in (ilsvrc.train_dir / m.name[:-4]).iterdir()]
    whole += [f"{path}/{last.name}/{m.name}" for m in images[:keep]]
    return last.name, whole


def test_a_train_tar_cut_short_converts_every_complete_image_and_says_what_is_missing(ilsvrc, tmp_path):
    cut, whole = cut_train_tar(ilsvrc, tmp_path / "ILSVRC2012_img_train.tar", keep=2)
    out = tmp_path / "out"
    convert(tmp_path / "ILSVRC2012_img_train.tar", out, "--val-pct", "0")
    assert sorted(listed(out)) == sorted(whole)
    assert report(out)["splits"]["train"]["written"] == len(whole)
    said = notes(out)
    assert "incomplete" in said and cut in said, said
    assert f"{cut} stops early" in said and "2 images" in said, said


def test_a_train_tar_cut_short_stops_the_run_with_on_error_fail(ilsvrc, tmp_path):
    cut, _ = cut_train_tar(ilsvrc, tmp_path / "ILSVRC2012_img_train.tar", keep=2)
    line = refused(tmp_path / "ILSVRC2012_img_train.tar", tmp_path / "out", "--val-pct", "0", "--on-error", "fail")
    assert "incomplete" in line and cut in line and "--on-error" in line, line


def test_a_train_tar_cut_inside_a_header_is_noted(ilsvrc, tmp_path):
    data = ilsvrc.train_tar.read_bytes()
    last = list(data_offsets(data).values())[-1]
    path = tmp_path / "train.tar"
    path.write_bytes(data[:last - 512 + 100])  # into the last class tar's header: two classes complete
    out = tmp_path / "out"
    convert(path, out, "--val-pct", "0")
    assert len(report(out)["splits"]["train"]["per_class"]) == 2
    assert "incomplete" in notes(out) and "train.tar" in notes(out)


@pytest.mark.parametrize("damage", ["garbage header", "one byte of a name"])
def test_a_damaged_class_tar_gives_its_images_before_the_damage(tmp_path, damage):
    name, inner = class_tar("n00000001", 5)
    place = data_offsets(inner)["n00000001_3.JPEG"] - 512  # the 4th image's header
    inner = bytearray(inner)
    if damage == "garbage header":
        inner[place:place + 512] = bytes(range(256)) * 2
    else:
        inner[place + 3] ^= 0x20
    archive = write_tar(tmp_path / "train.tar", [(name, bytes(inner)), class_tar("n00000002", 3, 10)])
    out = tmp_path / "out"
    convert(archive, out, "--val-pct", "0")
    assert sorted(listed(out)) == sorted([f"{archive}/{name}/n00000001_{k}.JPEG" for k in range(3)]
                                         + [f"{archive}/n00000002.tar/n00000002_{k}.JPEG" for k in (10, 11, 12)])
    said = notes(out)
    assert "n00000001.tar" in said and "damaged" in said and "3 images" in said, said


LONG = "a" * 120


@pytest.mark.parametrize("layout", ["class tars", "class folders"])
def test_symlinks_folders_and_other_files_inside_the_tar_are_left_out_with_notes(tmp_path, layout):
    at = "" if layout == "class tars" else "train/a/"
    odd = [info(f"{at}sub", tarfile.DIRTYPE), ("README.txt" if at == "" else f"{at}README.txt", b"text\n"),
           info(f"{at}l.JPEG", tarfile.SYMTYPE, f"{at}x_0.JPEG"), info(f"{at}h.JPEG", tarfile.LNKTYPE, f"{at}x_0.JPEG"),
           info(f"{at}long.JPEG", tarfile.SYMTYPE, f"{LONG}/x_0.JPEG")]  # a GNU long link name
    images = [(f"{at}x_{k}.JPEG", image(k)) for k in range(3)]
    if layout == "class tars":
        members: list[Member] = [info("dir", tarfile.DIRTYPE), ("a.tar", tar_bytes(images + odd)),
                                 info("b.tar", tarfile.SYMTYPE, "a.tar"), ("LICENSE", b"free\n")]
        want, links, others = [f"a.tar/{x}.JPEG" for x in ("h", "x_0", "x_1", "x_2")], 3, 2
    else:
        members = [info("train", tarfile.DIRTYPE), info("train/a", tarfile.DIRTYPE), *images, *odd,
                   ("train/b/y.JPEG", image(9))]
        want, links, others = [f"train/a/{x}.JPEG" for x in ("h", "x_0", "x_1", "x_2")] + ["train/b/y.JPEG"], 2, 1
    archive = write_tar(tmp_path / "train.tar", members)
    out = tmp_path / "out"
    convert(archive, out, "--val-pct", "0", "--relative-paths")
    assert sorted(listed(out)) == want  # the hard link h.JPEG is a file of x_0's bytes, as tar -x makes it
    said = notes(out)
    assert f"{plural(links, 'archive member')} left out: symbolic links" in said, said
    assert f"{plural(others, 'archive member')} left out: not images" in said, said
    assert "LongLink" not in said, said


@pytest.mark.parametrize("layout", ["class tars", "class folders"])
def test_a_duplicate_member_name_takes_the_last_copy_as_tar_does(tmp_path, layout):
    first, last = image(1), image(5)
    if layout == "class tars":
        members: list[Member] = [("a.tar", tar_bytes([("x.JPEG", first), ("y.JPEG", image(2)), ("x.JPEG", last)]))]
    else:
        members = [("t/a/x.JPEG", first), ("t/a/y.JPEG", image(2)), ("t/a/x.JPEG", last)]
    archive = write_tar(tmp_path / "train.tar", members)
    folder = tmp_path / "folder" / "a"
    folder.mkdir(parents=True)
    (folder / "x.JPEG").write_bytes(last)
    (folder / "y.JPEG").write_bytes(image(2))
    out, want = tmp_path / "out", tmp_path / "want"
    convert(archive, out, "--val-pct", "0")
    convert(folder.parent, want, "--val-pct", "0")
    assert all_records(out / "train_db") == all_records(want / "train_db")
    assert "duplicate" in notes(out) and "x.JPEG" in notes(out)


def test_unsafe_member_names_are_left_out(tmp_path):
    inner = tar_bytes([("../x.JPEG", image(1)), ("/abs/y.JPEG", image(2)), ("ok.JPEG", image(3))])
    archive = write_tar(tmp_path / "train.tar", [("a.tar", inner), ("../b.tar", tar_bytes([("z.JPEG", image(4))])),
                                                 ("c.tar", tar_bytes([("w.JPEG", image(5))]))])
    out = tmp_path / "out"
    convert(archive, out, "--val-pct", "0")
    assert sorted(listed(out)) == [f"{archive}/a.tar/ok.JPEG", f"{archive}/c.tar/w.JPEG"]
    said = notes(out)
    assert "unsafe" in said and "3 archive members" in said, said


def flat_val(tmp_path: Path, count: int) -> Path:
    return write_tar(tmp_path / "val.tar", [(f"ILSVRC2012_val_{i:08d}.JPEG", image(i)) for i in range(1, count + 1)])


def two_class_train(tmp_path: Path) -> Path:
    return write_tar(tmp_path / "train.tar", [class_tar("n00000001", 2), class_tar("n00000002", 2, 5)])


def test_a_labels_file_that_does_not_fit_the_val_set_is_used_where_it_fits(tmp_path):
    train, val = two_class_train(tmp_path), flat_val(tmp_path, 4)
    labels = tmp_path / "labels.txt"
    labels.write_text("ILSVRC2012_val_00000001.JPEG n00000001\nILSVRC2012_val_00000002.JPEG n00000002\n"
                      "ILSVRC2012_val_00000004.JPEG n09999999\nILSVRC2012_val_00000009.JPEG n00000001\n")
    out = tmp_path / "out"
    convert(train, out, "--val", val, "--val-labels", labels)
    assert sorted(listed(out, "val")) == [f"{val}/ILSVRC2012_val_0000000{i}.JPEG" for i in (1, 2)]
    said = notes(out)
    assert "no label" in said and "ILSVRC2012_val_00000003.JPEG" in said, said
    assert "classes the train set lacks" in said and "n09999999" in said, said
    assert "names 1 image the val input does not hold" in said, said


@pytest.mark.quick
def test_a_labels_file_of_another_val_set_stops_the_run(tmp_path):
    train, val = two_class_train(tmp_path), flat_val(tmp_path, 3)
    labels = tmp_path / "labels.txt"
    labels.write_text("ILSVRC2012_val_00000007.JPEG n00000001\nILSVRC2012_val_00000008.JPEG n00000002\n")
    line = refused(train, tmp_path / "out", "--val", val, "--val-labels", labels)
    assert "labels file of this val set" in line, line


@pytest.mark.quick
@pytest.mark.parametrize("content", [b"", b"just some text\n", b"\0" * 2048])
def test_a_train_input_that_is_neither_a_folder_nor_a_tar_stops_the_run(tmp_path, content):
    train = tmp_path / "train.tar"
    train.write_bytes(content)
    line = refused(train, tmp_path / "out")
    assert str(train) in line, line


def test_a_compressed_train_tar_is_refused_with_how_to_decompress_it(ilsvrc, tmp_path):
    packed = tmp_path / "train.tar.gz"
    packed.write_bytes(gzip.compress(ilsvrc.train_tar.read_bytes()))
    line = refused(packed, tmp_path / "out")
    assert "gzip" in line and f"gunzip -k {packed}" in line, line
    line = refused(ilsvrc.train_tar, tmp_path / "out", "--val", packed, "--val-labels", ilsvrc.labels[MAPPING])
    assert f"gunzip -k {packed}" in line, line


def test_a_member_name_with_a_line_break_is_skipped_with_the_reason(tmp_path):
    archive = write_tar(tmp_path / "train.tar", [("t/a/x.JPEG", image(1)), ("t/a/y\nz.JPEG", image(2)),
                                                 ("t/b/w.JPEG", image(3))])
    out = tmp_path / "out"
    convert(archive, out, "--val-pct", "0")
    split = report(out)["splits"]["train"]
    assert split["written"] == 2
    assert sorted(listed(out)) == [f"{archive}/t/a/x.JPEG", f"{archive}/t/b/w.JPEG"]
    assert [f["path"].endswith("y\nz.JPEG") for f in split["skipped_files"]] == [True]
    assert "line break" in split["skipped_files"][0]["reason"]


def test_a_corrupt_jpeg_member_is_skipped_like_a_bad_file(tmp_path):
    inner = tar_bytes([("x.JPEG", image(1)), ("bad.JPEG", b"\xff\xd8\xff\xe0" + b"\x13" * 300), ("y.JPEG", image(2))])
    archive = write_tar(tmp_path / "train.tar", [("a.tar", inner), class_tar("b", 1)])
    out = tmp_path / "out"
    convert(archive, out, "--val-pct", "0")
    split = report(out)["splits"]["train"]
    assert split["written"] == 3
    assert [f["path"] for f in split["skipped_files"]] == ["a.tar/bad.JPEG"]
    assert f"{archive}/a.tar/bad.JPEG" not in listed(out)


# ---------------------------------------------------------------------------------------------------- resume

def test_resume_reads_the_saved_index_instead_of_scanning_again(ilsvrc, tmp_path, monkeypatch):
    from etl.pipeline import convert as convert_in_process
    from etl.settings import build_settings
    from etl.sources import archive

    values = {"train_dir": str(ilsvrc.train_tar), "out_dir": str(tmp_path / "out"), "val_dir": str(ilsvrc.val_tar),
              "val_labels": str(ilsvrc.labels[VALPREP]), "workers": 1, "width": 24, "height": 24}
    first = convert_in_process(build_settings(values), progress=False)
    assert len(list((tmp_path / "out" / ".etl").glob("index.*.npz"))) == 2  # train's and val's

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the archive was scanned again")

    monkeypatch.setattr(archive.TarIndexer, "run", no_scan)
    again = convert_in_process(build_settings({**values, "resume": True}), progress=False)
    assert again["splits"]["train"]["written"] == first["splits"]["train"]["written"] > 0


def test_resume_refuses_an_archive_changed_since_the_first_run(ilsvrc, tmp_path):
    train = tmp_path / "train.tar"
    train.write_bytes(ilsvrc.train_tar.read_bytes())
    out = tmp_path / "out"
    convert(train, out, "--val-pct", "20")
    st = train.stat()
    os.utime(train, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as a new download of the same size would be
    proc = run_cli("convert", str(train), str(out), "--val-pct", "20", "--resume", *SMALL)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"etl: error: --resume: {train} changed since the first run (it: added, removed, "
                                   "or another size or modification time); convert again with --overwrite in place of "
                                   "--resume")


def test_on_error_fail_at_a_bad_member_gives_advice_that_works(tmp_path):
    inner = tar_bytes([("x.JPEG", image(1)), ("y.JPEG", image(2)), ("bad.JPEG", b"\xff\xd8" + b"\x13" * 300)])
    archive = write_tar(tmp_path / "train.tar", [("a.tar", inner), class_tar("b", 2)])
    out = tmp_path / "out"
    args = ("convert", str(archive), str(out), "--val-pct", "0", "--workers", "1", "--chunk-size", "1", *SMALL)
    proc = run_cli(*args, "--on-error", "fail")
    assert proc.returncode == 1 and "a.tar/bad.JPEG" in proc.stderr
    advice = "run the same command with --resume --on-error skip"
    assert advice in proc.stderr
    proc = run_cli(*args, "--on-error", "fail", "--resume", "--on-error", "skip")  # the advice, literally
    assert proc.returncode == 0, proc.stderr
    split = report(out)["splits"]["train"]
    assert split["written"] == 4 and [f["path"] for f in split["skipped_files"]] == ["a.tar/bad.JPEG"]


@pytest.mark.quick
def test_a_member_read_is_charged_its_size_and_a_cut_archive_says_so(tmp_path):
    from etl.messages import Item
    from etl.sources.archive import ArchiveReader, ArchiveSource
    from etl.sources.base import Unreadable

    archive = write_tar(tmp_path / "train.tar", [class_tar("a", 2)])
    source = ArchiveSource(str(archive))
    path = source.classes()["a"][1]
    item = Item(0, path, 0, *source.locate(path))
    charged: list[int] = []
    data = ArchiveReader(str(archive), folder=False).read(item, charged.append, drop_cache=True)
    assert data == image(1) and charged == [len(data)]
    with open(archive, "r+b") as fh:
        fh.truncate(item.offset + 10)
    with pytest.raises(Unreadable, match="the archive ends"):
        ArchiveReader(str(archive), folder=False).read(item, charged.append, drop_cache=False)


# ---------------------------------------------------------------------------------------------------- scan_tar

def scanned(path: Path) -> tuple[list[tuple[str, int, int]], str]:
    fd = os.open(path, os.O_RDONLY)
    try:
        scan = scan_tar(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return [(e.name.rstrip("/"), e.offset, e.size) for e in scan.entries], scan.damage


def tarfile_view(path: Path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar.getmembers()]


NAMES = ["a.JPEG", "d/" + "long_" * 30 + ".JPEG", "dir/" * 30 + "deep.JPEG", "ünïcødé/ß.JPEG", "x" * 100]


@pytest.mark.quick
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_scan_tar_finds_what_tarfile_finds(tmp_path, fmt):
    names = NAMES if fmt != tarfile.USTAR_FORMAT else [n for n in NAMES if n.isascii() and "long_" not in n]
    members: list[Member] = [(name, bytes([k]) * (k * 700)) for k, name in enumerate(names)]
    members += [info("folder", tarfile.DIRTYPE), info("link", tarfile.SYMTYPE, "a.JPEG"),
                info("hard", tarfile.LNKTYPE, "a.JPEG"), ("empty.JPEG", b"")]
    if fmt != tarfile.USTAR_FORMAT:
        members.append(info("far", tarfile.SYMTYPE, "t/" * 70))  # a long link target (GNU 'K', pax linkpath)
    path = write_tar(tmp_path / "x.tar", members, fmt)
    entries, damage = scanned(path)
    assert damage == ""
    assert entries == tarfile_view(path)


@pytest.mark.quick
def test_scan_tar_stops_at_a_damaged_header_keeping_the_entries_before_it(tmp_path):
    members: list[Member] = [(f"m{k}.JPEG", bytes(1000)) for k in range(6)]
    data = bytearray(tar_bytes(members))
    place = data_offsets(bytes(data))["m4.JPEG"] - 512
    data[place + 130] ^= 1  # one bit of the size field: the checksum no longer holds
    path = tmp_path / "x.tar"
    path.write_bytes(bytes(data))
    entries, damage = scanned(path)
    assert [e[0] for e in entries] == [f"m{k}.JPEG" for k in range(4)]
    assert damage == f"a damaged tar header at byte {place}"


@pytest.mark.quick
def test_scan_tar_reads_a_base_256_size(tmp_path):
    data = bytearray(tar_bytes([("big.JPEG", bytes(3000)), ("next.JPEG", bytes(10))], tarfile.USTAR_FORMAT))
    data[124:136] = b"\x80" + (3000).to_bytes(11, "big")  # as GNU tar writes sizes of 8 GiB and more
    data[148:156] = b"        "
    data[148:156] = b"%06o\0 " % sum(data[:512])
    path = tmp_path / "x.tar"
    path.write_bytes(bytes(data))
    entries, damage = scanned(path)
    assert damage == ""
    assert entries == tarfile_view(path)
    assert entries[0][2] == 3000


@pytest.mark.quick
@pytest.mark.parametrize("keep", [100, 512 + 1500, 3 * 512 + 2100])
def test_scan_tar_says_where_a_cut_tar_ends(tmp_path, keep):
    data = tar_bytes([("a.JPEG", bytes(2000)), ("b.JPEG", bytes(2000))])
    path = tmp_path / "x.tar"
    path.write_bytes(data[:keep])
    entries, damage = scanned(path)
    assert damage.startswith("the file ends inside"), damage
    assert all(offset + size <= keep for _, offset, size in entries[:-1])


@pytest.mark.quick
def test_scan_tar_stops_at_damaged_pax_records_without_raising(tmp_path):
    data = bytearray(tar_bytes([("a.JPEG", bytes(600)), ("ü" * 80 + ".JPEG", bytes(10))], tarfile.PAX_FORMAT))
    header = data_offsets(bytes(data))["a.JPEG"] + 1024  # after a.JPEG's 600 bytes: the next pax header
    assert data[header + 156:header + 157] == tarfile.XHDTYPE
    data[header + 512:header + 514] = b"zz"  # a pax header's data has no checksum: its record length is no number
    path = tmp_path / "x.tar"
    path.write_bytes(bytes(data))
    entries, damage = scanned(path)
    assert [e[0] for e in entries] == ["a.JPEG"]
    assert damage == f"a damaged pax header at byte {header}"


def test_a_cut_class_tar_in_a_folder_of_class_tars_is_named(tmp_path):
    folder = tmp_path / "tars"
    folder.mkdir()
    for name, data in (class_tar("n00000001", 3), class_tar("n00000002", 3, 10)):
        (folder / name).write_bytes(data)
    whole = (folder / "n00000002.tar").read_bytes()
    (folder / "n00000002.tar").write_bytes(whole[:data_offsets(whole)["n00000002_11.JPEG"] + 100])
    out = tmp_path / "out"
    convert(folder, out, "--val-pct", "0", "--relative-paths")
    assert sorted(listed(out)) == [f"n00000001.tar/n00000001_{k}.JPEG" for k in range(3)] + \
        ["n00000002.tar/n00000002_10.JPEG"]
    assert "incomplete archive: n00000002.tar stops early" in notes(out), notes(out)


def test_a_cut_val_tar_is_noted_and_stops_the_run_with_on_error_fail(tmp_path):
    train, val = two_class_train(tmp_path), flat_val(tmp_path, 4)
    whole = val.read_bytes()
    val.write_bytes(whole[:data_offsets(whole)["ILSVRC2012_val_00000004.JPEG"] + 50])
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"ILSVRC2012_val_0000000{i} n0000000{1 + i % 2}\n" for i in range(1, 5)))
    out = tmp_path / "out"
    convert(train, out, "--val", val, "--val-labels", labels)
    assert sorted(listed(out, "val")) == [f"{val}/ILSVRC2012_val_0000000{i}.JPEG" for i in (1, 2, 3)]
    assert "val: incomplete archive: val.tar stops early" in notes(out), notes(out)
    line = refused(train, tmp_path / "out2", "--val", val, "--val-labels", labels, "--on-error", "fail")
    assert line.startswith("etl: error: --on-error fail stops at a damaged archive: val: incomplete archive: "
                           "val.tar stops early"), line


@pytest.mark.quick
def test_a_tar_made_from_its_own_folder_names_members_without_the_leading_dot(tmp_path):
    """`tar cf train.tar .` writes ./n1.tar, ./n1/x.JPEG: the list files must not show '/./'."""
    from etl.sources.archive import ArchiveSource

    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        info = tarfile.TarInfo("./n1_1.JPEG")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with tarfile.open(tmp_path / "train.tar", "w") as tar:
        info = tarfile.TarInfo("./n1.tar")
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    assert ArchiveSource(str(tmp_path / "train.tar")).classes() == {"n1": ["n1.tar/n1_1.JPEG"]}


# ---------------------------------------------------------------------------------------------------- review finds

@pytest.mark.quick
def test_a_stray_image_beside_the_class_folders_does_not_merge_the_classes(tmp_path):
    from etl.sources.archive import ArchiveSource

    members = [(f"train/n{c}/{k}.JPEG", image(k)) for c in range(3) for k in range(2)]
    members.append(("train/readme.jpg", image(9)))
    source = ArchiveSource(str(write_tar(tmp_path / "train.tar", members)))
    assert list(source.classes()) == ["n0", "n1", "n2"]
    assert "1 image outside class folders left out (e.g. 'train/readme.jpg')" in source.notes()


@pytest.mark.quick
def test_a_stray_tar_inside_a_class_folder_is_left_out_not_taken_for_the_classes(tmp_path):
    from etl.sources.archive import ArchiveSource

    members = [(f"train/n{c}/{k}.JPEG", image(k)) for c in range(3) for k in range(2)]
    members.append(("train/n1/backup.tar", tar_bytes([("old.JPEG", image(7))])))
    source = ArchiveSource(str(write_tar(tmp_path / "train.tar", members)))
    assert {name: len(paths) for name, paths in source.classes().items()} == {"n0": 2, "n1": 2, "n2": 2}
    assert any("inside tars within class folders left out" in note for note in source.notes())


@pytest.mark.quick
def test_a_flat_folder_with_a_tar_beside_its_images_is_a_folder_not_a_folder_of_class_tars(tmp_path):
    from etl.sources.folder import FolderSource
    from etl.sources.registry import find_kind

    val = tmp_path / "val"
    val.mkdir()
    (val / "ILSVRC2012_val_00000001.JPEG").write_bytes(image(1))
    write_tar(val / "extra.tar", [class_tar("a", 1)])
    assert find_kind(str(val)) is FolderSource


def test_an_image_cut_inside_its_class_tar_is_not_read_with_the_next_tars_bytes(tmp_path):
    inner = tar_bytes([(f"a{k}.JPEG", image(k)) for k in range(3)])
    last = tarfile.open(fileobj=io.BytesIO(inner)).getmembers()[-1]
    cut = inner[: last.offset_data + last.size // 2]
    cut += b"\0" * (-len(cut) % 512)  # a whole number of blocks, still inside a2's data
    archive = write_tar(tmp_path / "train.tar", [("n1.tar", cut), class_tar("n2", 2)])
    out = tmp_path / "out"
    convert(archive, out, "--val-pct", "0")
    assert report(out)["splits"]["train"]["written"] == 4  # a0, a1 and n2's two; not a2
    assert "usable: its 2 images before that point" in notes(out)


def test_a_damaged_saved_index_stops_a_resume_with_one_line_and_notes_do_not_pile_up(tmp_path):
    train = tmp_path / "train.tar"
    write_tar(train, [class_tar("a", 2), class_tar("b", 2), ("loose.JPEG", image(5))])
    out = tmp_path / "out"
    convert(train, out, "--val-pct", "0")
    for _ in range(2):
        assert run_cli("convert", str(train), str(out), "--val-pct", "0", "--resume", *SMALL).returncode == 0
    assert report(out)["notes"] == ["1 image outside the class tars left out (e.g. 'loose.JPEG')"]
    saved = next((out / ".etl").glob("index.*.npz"))
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    proc = run_cli("convert", str(train), str(out), "--val-pct", "0", "--resume", *SMALL)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert f"the saved archive index {saved} is damaged" in proc.stderr and "rm " in proc.stderr
