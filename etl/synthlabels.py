"""Synth labels: an ILSVRC2012 val set's labels written in every form users hold (devkit, Kaggle, valprep...)."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
from scipy.io import savemat

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

SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
                 "num_train_images")
DEVKIT_TOP = "ILSVRC2012_devkit_t12"


def leaf_ids(all_wnids: list[str]) -> dict[str, int]:
    """WNID -> ILSVRC2012_ID for the leaves, in a shuffled order that is never the sorted one (as in the devkit,
    where ID 1 is n02119789 and tench n01440764 is ID 449)."""
    order = sorted(all_wnids)
    random.Random(2012).shuffle(order)
    if order == sorted(order):
        order.reverse()
    return {wnid: i for i, wnid in enumerate(order, 1)}


def _inner_wnids(all_wnids: list[str], count: int) -> list[str]:
    taken = set(all_wnids)
    return [w for w in (f"n{99999999 - k:08d}" for k in range(count + len(taken))) if w not in taken][:count]


def _synset(wnid_id: int, wnid: str, children: list[int], height: int, images: int) -> tuple:
    """One synset as MATLAB stores it: numbers as doubles, strings as char, children as a row (empty for leaves)."""
    def number(x: int) -> np.ndarray:
        return np.array([[float(x)]])

    return (number(wnid_id), wnid, f"words of {wnid}", f"gloss of {wnid}", number(len(children)),
            np.array([children], dtype=float).reshape(1, len(children)), number(height), number(images))


def meta_mat(all_wnids: list[str]) -> bytes:
    """A devkit meta.mat: the leaves (IDs 1..N in leaf_ids' order), then two inner nodes with IDs beyond them."""
    ids = leaf_ids(all_wnids)
    rows = [_synset(i, wnid, [], 0, 1300) for wnid, i in sorted(ids.items(), key=lambda kv: kv[1])]
    n = len(rows)
    parent, root = _inner_wnids(all_wnids, 2)
    rows.append(_synset(n + 1, parent, list(range(1, n + 1)), 1, 1300 * n))
    rows.append(_synset(n + 2, root, [n + 1], 2, 1300 * n))
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in SYNSET_FIELDS])
    for i, row in enumerate(rows):
        synsets[i, 0] = row
    out = io.BytesIO()
    savemat(out, {"synsets": synsets})
    return out.getvalue()


def _val_stems(wnid_of: dict[str, str]) -> list[str]:
    stems = [f"ILSVRC2012_val_{i:08d}" for i in range(1, len(wnid_of) + 1)]
    if sorted(wnid_of) != stems:
        raise ValueError(f"wnid_of must label ILSVRC2012_val_00000001 .. {stems[-1]}, every one")
    return stems


def _devkit_tar(path: Path, members: dict[str, bytes], mode: str) -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{DEVKIT_TOP}/{name}")
            info.size, info.mtime, info.mode = len(data), 1338000000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def _write_devkit(folder: Path, wnid_of: dict[str, str], all_wnids: list[str]) -> dict[str, Path]:
    """The devkit as tar.gz and as plain tar, and its ground truth alone with a copy of meta.mat beside it."""
    ids, stems, meta = leaf_ids(all_wnids), _val_stems(wnid_of), meta_mat(all_wnids)
    truth = "".join(f"{ids[wnid_of[s]]}\n" for s in stems).encode()
    members = {"COPYING": b"synthetic devkit for tests\n", "data/meta.mat": meta,
               "data/ILSVRC2012_validation_ground_truth.txt": truth, "evaluation/demo_eval.m": b"% demo\n"}
    alone = folder / "devkit_data"
    alone.mkdir(parents=True, exist_ok=True)
    (alone / "meta.mat").write_bytes(meta)
    (alone / "ILSVRC2012_validation_ground_truth.txt").write_bytes(truth)
    return {DEVKIT_TAR_GZ: _devkit_tar(folder / f"{DEVKIT_TOP}.tar.gz", members, "w:gz"),
            DEVKIT_TAR: _devkit_tar(folder / f"{DEVKIT_TOP}.tar", members, "w"),
            GROUND_TRUTH: alone / "ILSVRC2012_validation_ground_truth.txt"}


def _kaggle_csv(wnid_of: dict[str, str]) -> str:
    """LOC_val_solution.csv: rows in no order, one or two boxes each."""
    rng = random.Random(8726)
    rows = []
    for name, wnid in wnid_of.items():
        boxes = [f"{wnid} {rng.randint(0, 200)} {rng.randint(0, 200)} {rng.randint(201, 500)} {rng.randint(201, 500)}"
                 for _ in range(rng.randint(1, 2))]
        rows.append(f"{name},{' '.join(boxes)} \n")
    rng.shuffle(rows)
    return "ImageId,PredictionString\n" + "".join(rows)


def _valprep(wnid_of: dict[str, str]) -> str:
    head = "#!/bin/bash\n# move the val images into one folder per class\n"
    mkdirs = "".join(f"mkdir -p {wnid}\n" for wnid in sorted(set(wnid_of.values())))
    return head + mkdirs + "".join(f"mv {s}.JPEG {wnid_of[s]}/\n" for s in _val_stems(wnid_of))


def write_label_forms(folder: str | Path, wnid_of: dict[str, str], all_wnids: list[str]) -> dict[str, Path]:
    """Writes wnid_of (the stems ILSVRC2012_val_00000001..N, every one -> WNID) into folder in every form that
    etl.sources.vallabels reads; all_wnids: the classes (Caffe val.txt's index is into sorted(all_wnids); the
    devkit's meta.mat gives them IDs in another order). Returns the form's name -> its file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stems, classes = _val_stems(wnid_of), sorted(all_wnids)
    texts = {
        KAGGLE: ("LOC_val_solution.csv", _kaggle_csv(wnid_of)),
        VALPREP: ("valprep.sh", _valprep(wnid_of)),
        CAFFE: ("val.txt", "".join(f"{s}.JPEG {classes.index(wnid_of[s])}\n" for s in stems)),
        MAPPING: ("val_map.txt", "".join(f"{s}.JPEG {wnid_of[s]}\n" for s in stems)),
        WNID_LINES: ("imagenet_2012_validation_synset_labels.txt", "".join(f"{wnid_of[s]}\n" for s in stems)),
    }
    paths = _write_devkit(folder, wnid_of, all_wnids)
    for form, (name, text) in texts.items():
        paths[form] = folder / name
        paths[form].write_text(text, encoding="utf-8")
    return paths
