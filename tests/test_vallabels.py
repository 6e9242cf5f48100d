"""Val labels: every form of the ILSVRC2012 val labels gives the same classes; each user error is one clear line."""

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from etl.errors import UsageError
from etl.sources.vallabels import (
    CAFFE,
    DEVKIT_TAR,
    DEVKIT_TAR_GZ,
    GROUND_TRUTH,
    KAGGLE,
    MAPPING,
    VALPREP,
    WNID_LINES,
    ValLabels,
    load_val_labels,
    stem,
)
from etl.synthlabels import leaf_ids, meta_mat, write_label_forms

pytestmark = pytest.mark.quick

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n02119789"]  # sorted, as the train classes
WNID_OF = {f"ILSVRC2012_val_{i:08d}": WNIDS[(i * 3) % len(WNIDS)] for i in range(1, 31)}
ALL_FORMS = [DEVKIT_TAR_GZ, DEVKIT_TAR, GROUND_TRUTH, KAGGLE, VALPREP, CAFFE, MAPPING, WNID_LINES]


@pytest.fixture
def forms(tmp_path) -> dict[str, Path]:
    return write_label_forms(tmp_path / "labels", WNID_OF, WNIDS)


def load(path, classes=WNIDS) -> ValLabels:
    return load_val_labels(str(path), list(classes))


def error(path, classes=WNIDS) -> str:
    with pytest.raises(UsageError) as info:
        load(path, classes)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def write(tmp_path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# --- every form, the same labels ---

@pytest.mark.parametrize("form", ALL_FORMS)
def test_every_form_gives_the_same_labels(forms, form):
    assert sorted(forms) == sorted(ALL_FORMS)
    labels = load(forms[form])
    assert labels.form == form
    assert labels.wnid_of == WNID_OF


def test_stem_strips_the_folder_and_one_extension():
    assert stem("x/y/ILSVRC2012_val_00000001.JPEG") == "ILSVRC2012_val_00000001"
    assert stem("ILSVRC2012_val_00000001") == "ILSVRC2012_val_00000001"
    assert stem("a.b.JPEG") == "a.b"


def test_detection_is_by_content_not_by_name(forms, tmp_path):
    for form, path in forms.items():
        if form != GROUND_TRUTH:  # that one needs meta.mat beside it
            renamed = write(tmp_path, f"labels-{len(form)}-{form[:3]}.dat", path.read_bytes())
            assert load(renamed).form == form


# --- the devkit ---

def test_meta_mat_reads_back_as_the_devkits_does():
    synsets = scipy.io.loadmat(io.BytesIO(meta_mat(WNIDS)), squeeze_me=True)["synsets"]
    assert synsets.dtype.names == ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
                                   "wordnet_height", "num_train_images")
    leaves = [s for s in synsets if s["num_children"] == 0]
    inner = [s for s in synsets if s["num_children"] > 0]
    assert sorted(s["WNID"] for s in leaves) == WNIDS
    assert [int(s["ILSVRC2012_ID"]) for s in leaves] == list(range(1, len(WNIDS) + 1))
    assert [s["WNID"] for s in leaves] != WNIDS  # IDs are not the sorted order
    assert min(int(s["ILSVRC2012_ID"]) for s in inner) > len(WNIDS)
    assert all(s["WNID"] not in WNIDS for s in inner)


def test_devkit_ids_are_meta_mats_not_the_sorted_index(forms):
    ids = leaf_ids(WNIDS)
    moved = [w for w in WNIDS if ids[w] - 1 != WNIDS.index(w)]
    assert moved  # the synthetic devkit numbers the classes in another order than sorted
    image = next(s for s, w in WNID_OF.items() if w in moved)
    by_sorted_index = WNIDS[ids[WNID_OF[image]] - 1]
    for form in (DEVKIT_TAR_GZ, DEVKIT_TAR, GROUND_TRUTH):
        got = load(forms[form]).wnid_of[image]
        assert got == WNID_OF[image] != by_sorted_index


def devkit_tar(tmp_path, members: dict[str, bytes], name="devkit.tar.gz", mode="w:gz") -> Path:
    path = tmp_path / name
    with tarfile.open(path, mode) as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_devkit_members_are_found_under_any_top_folder(tmp_path):
    truth = "".join(f"{leaf_ids(WNIDS)[w]}\n" for w in WNID_OF.values()).encode()
    path = devkit_tar(tmp_path, {"my copy/devkit/data/meta.mat": meta_mat(WNIDS),
                                 "my copy/devkit/data/ILSVRC2012_validation_ground_truth.txt": truth})
    assert load(path).wnid_of == WNID_OF


def test_devkit_missing_a_member_is_named(tmp_path):
    only_meta = devkit_tar(tmp_path, {"ILSVRC2012_devkit_t12/data/meta.mat": meta_mat(WNIDS)}, "a.tar.gz")
    assert "ILSVRC2012_validation_ground_truth.txt" in error(only_meta)
    only_truth = devkit_tar(tmp_path, {"ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": b"1\n"},
                            "b.tar", "w")
    message = error(only_truth)
    assert "meta.mat" in message and "ground_truth" not in message


def test_gzip_that_is_not_a_tar_is_refused(tmp_path):
    path = write(tmp_path, "labels.gz", gzip.compress(b"ILSVRC2012_val_00000001 n01440764\n"))
    assert "not a readable tar" in error(path)


@pytest.mark.parametrize("form", [DEVKIT_TAR_GZ, DEVKIT_TAR])
def test_devkit_cut_short_is_refused(forms, tmp_path, form):
    data = forms[form].read_bytes()
    path = write(tmp_path, "cut.tar.gz", data[: len(data) // 2])
    assert "is not a readable tar" in error(path)


def test_ground_truth_without_meta_mat_beside_it(forms, tmp_path):
    path = write(tmp_path, "ILSVRC2012_validation_ground_truth.txt", forms[GROUND_TRUTH].read_bytes())
    message = error(path)
    assert "meta.mat" in message and "ILSVRC2012_devkit_t12.tar.gz" in message


def test_ground_truth_id_not_in_meta_mat(tmp_path):
    (tmp_path / "meta.mat").write_bytes(meta_mat(WNIDS))
    path = write(tmp_path, "truth.txt", "1\n2\n99\n")
    message = error(path)
    assert "line 3" in message and "99" in message


def test_meta_mat_giving_one_id_two_wnids_is_refused(tmp_path):
    synsets = np.empty((3, 1), dtype=[("ILSVRC2012_ID", object), ("WNID", object)])
    for row, (wnid_id, wnid) in enumerate([(1, WNIDS[0]), (2, WNIDS[1]), (1, WNIDS[2])]):
        synsets[row, 0] = (np.array([[float(wnid_id)]]), wnid)
    out = io.BytesIO()
    scipy.io.savemat(out, {"synsets": synsets})
    (tmp_path / "meta.mat").write_bytes(out.getvalue())
    message = error(write(tmp_path, "truth.txt", "1\n2\n"))
    assert f"gives ILSVRC2012_ID 1 two WNIDs, {WNIDS[0]} and {WNIDS[2]}" in message and "\n" not in message


def test_meta_mat_giving_one_wnid_two_ids_is_refused(tmp_path):
    """Two IDs for one WNID: the images of the ID whose own WNID is gone would get that class."""
    synsets = np.empty((3, 1), dtype=[("ILSVRC2012_ID", object), ("WNID", object)])
    for row, (wnid_id, wnid) in enumerate([(1, WNIDS[0]), (2, WNIDS[0]), (3, WNIDS[2])]):
        synsets[row, 0] = (np.array([[float(wnid_id)]]), wnid)
    out = io.BytesIO()
    scipy.io.savemat(out, {"synsets": synsets})
    (tmp_path / "meta.mat").write_bytes(out.getvalue())
    message = error(write(tmp_path, "truth.txt", "1\n2\n3\n"))
    assert f"gives {WNIDS[0]} two ILSVRC2012_IDs, 1 and 2" in message and "\n" not in message


def test_meta_mat_without_synsets(tmp_path):
    out = io.BytesIO()
    scipy.io.savemat(out, {"classes": np.arange(3)})
    (tmp_path / "meta.mat").write_bytes(out.getvalue())
    assert "no synsets struct" in error(write(tmp_path, "truth.txt", "1\n"))


def test_meta_mat_that_is_not_a_mat_file(tmp_path):
    (tmp_path / "meta.mat").write_bytes(b"not a MAT file at all\n" * 20)
    assert "not a readable MAT file" in error(write(tmp_path, "truth.txt", "1\n"))


def test_meta_mat_given_itself_points_to_the_ground_truth(forms):
    message = error(forms[GROUND_TRUTH].parent / "meta.mat")
    assert "MAT file" in message and "ground_truth" in message


# --- valprep.sh ---

@pytest.mark.parametrize("ending", ["\t\n", "  \n", "\r\n", " \t\r\n"])
def test_valprep_line_endings_in_the_wild(forms, tmp_path, ending):
    text = forms[VALPREP].read_text()
    path = write(tmp_path, "valprep.sh", "\ufeff" + "\n\n".join(text.split("\n")).replace("\n", ending))
    labels = load(path)
    assert (labels.form, labels.wnid_of) == (VALPREP, WNID_OF)


def test_valprep_destination_without_slash_and_tabs_between(tmp_path):
    path = write(tmp_path, "v.sh", "mkdir -p n01440764\nmv\tILSVRC2012_val_00000001.JPEG\t./n01440764\n")
    assert load(path).wnid_of == {"ILSVRC2012_val_00000001": "n01440764"}


def test_valprep_unknown_line(tmp_path):
    path = write(tmp_path, "v.sh", "#!/bin/sh\nmkdir -p n01440764\nmv ILSVRC2012_val_00000001.JPEG n01440764/\n"
                                   "cp ILSVRC2012_val_00000002.JPEG n01440764/\n")
    assert "line 4" in error(path)


def test_valprep_with_only_mkdir_holds_no_labels(tmp_path):
    assert "holds no labels" in error(write(tmp_path, "v.sh", "mkdir -p n01440764\n"))


# --- Caffe val.txt ---

def test_caffe_index_is_into_the_sorted_train_classes(tmp_path):
    classes = ["n01440764", "n01443537", "n09999999"]
    path = write(tmp_path, "val.txt", "ILSVRC2012_val_00000001.JPEG 2\nval/ILSVRC2012_val_00000002.JPEG 0\n")
    labels = load(path, classes)
    assert labels.form == CAFFE
    assert labels.wnid_of == {"ILSVRC2012_val_00000001": "n09999999", "ILSVRC2012_val_00000002": "n01440764"}


@pytest.mark.parametrize("label", ["5", "-1"])
def test_caffe_index_outside_the_train_classes(tmp_path, label):
    path = write(tmp_path, "val.txt", f"ILSVRC2012_val_00000001.JPEG 0\nILSVRC2012_val_00000002.JPEG {label}\n")
    message = error(path)
    assert "line 2" in message and f"index {label}" in message and "5 train classes (0..4)" in message


def test_caffe_without_train_classes(tmp_path):
    assert "outside the 0 train classes:" in error(write(tmp_path, "val.txt", "ILSVRC2012_val_00000001.JPEG 0\n"), [])


def test_caffe_line_with_a_class_name(tmp_path):
    path = write(tmp_path, "val.txt", "ILSVRC2012_val_00000001.JPEG 0\nILSVRC2012_val_00000002.JPEG n01440764\n")
    assert "line 2" in error(path)


# --- mappings, Kaggle, WNID per line ---

@pytest.mark.parametrize("sep", [" ", "\t", ",", ", "])
@pytest.mark.parametrize("ext", ["", ".JPEG"])
def test_mapping_with_or_without_extension(tmp_path, sep, ext):
    text = "".join(f"{s}{ext}{sep}{w}\n" for s, w in WNID_OF.items())
    labels = load(write(tmp_path, "map.csv", text))
    assert (labels.form, labels.wnid_of) == (MAPPING, WNID_OF)


def test_kaggle_rows_in_any_order_with_a_bom_and_crlf(forms, tmp_path):
    path = write(tmp_path, "k.csv", "\ufeff" + forms[KAGGLE].read_text().replace("\n", "\r\n"))
    assert load(path).wnid_of == WNID_OF


def test_kaggle_header_only_holds_no_labels(tmp_path):
    assert "holds no labels" in error(write(tmp_path, "k.csv", "ImageId,PredictionString\n"))


def test_kaggle_row_without_a_wnid(tmp_path):
    path = write(tmp_path, "k.csv", "ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n"
                                    "ILSVRC2012_val_00000002,\n")
    assert "line 3" in error(path)


def test_wnid_per_line_rejects_other_tokens(tmp_path):
    message = error(write(tmp_path, "w.txt", "n01440764\nn0144076\n"))
    assert "line 2" in message and "n0144076" in message


@pytest.mark.parametrize("name", ["w.txt", "truth.txt"])
def test_positional_forms_refuse_a_blank_line_between(tmp_path, name):
    (tmp_path / "meta.mat").write_bytes(meta_mat(WNIDS))
    line = "n01440764" if name == "w.txt" else "1"
    assert "blank line (line 2)" in error(write(tmp_path, name, f"{line}\n\n{line}\n"))
    assert len(load(write(tmp_path, name, f"{line}\n{line}\n\n\n")).wnid_of) == 2  # blank lines at the end: fine


def test_comment_outside_valprep_is_a_malformed_line(tmp_path):
    message = error(write(tmp_path, "m.txt", "ILSVRC2012_val_00000001 n01440764\n# more\n"))
    assert "line 2" in message and "comments" in message


# --- duplicates ---

def test_same_image_same_class_twice_is_fine(tmp_path):
    path = write(tmp_path, "m.txt", "ILSVRC2012_val_00000001.JPEG n01440764\nILSVRC2012_val_00000001 n01440764\n")
    assert load(path).wnid_of == {"ILSVRC2012_val_00000001": "n01440764"}


def test_same_image_two_classes_is_named(tmp_path):
    path = write(tmp_path, "m.txt", "ILSVRC2012_val_00000001.JPEG n01440764\nILSVRC2012_val_00000002 n01440764\n"
                                    "ILSVRC2012_val_00000001 n01443537\n")
    message = error(path)
    assert "ILSVRC2012_val_00000001" in message and "line 1" in message and "line 3" in message


# --- files that are none of these ---

def test_missing_file(tmp_path):
    assert "cannot read" in error(tmp_path / "nope.txt")


def test_folder(tmp_path):
    assert "is a folder" in error(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\n \n\t\n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path, content):
    assert "is empty" in error(write(tmp_path, "e.txt", content))


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", b"caf\xe9 n01440764\n"])
def test_binary_or_not_utf8(tmp_path, content):
    assert "not a text file" in error(write(tmp_path, "b.bin", content))


@pytest.mark.parametrize("text", ["ILSVRC2012_val_00000001.JPEG\n", "a b c\n", "hello\n", ",,\n"])
def test_form_not_recognised_lists_the_accepted_forms(tmp_path, text):
    message = error(write(tmp_path, "x.txt", text))
    assert "no form etl knows" in message and "valprep.sh" in message and "LOC_val_solution.csv" in message


def test_a_file_too_big_to_be_labels(tmp_path, monkeypatch):
    monkeypatch.setattr("etl.sources.vallabels.MAX_BYTES", 100)
    assert "too big" in error(write(tmp_path, "big.tar", b"\0" * 101))


def test_long_malformed_line_is_shortened(tmp_path):
    message = error(write(tmp_path, "m.txt", "ILSVRC2012_val_00000001 n01440764\n" + "x " * 500 + "\n"))
    assert "line 2" in message and len(message) < 400
