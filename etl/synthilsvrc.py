"""Synth ILSVRC: the ILSVRC2012 downloads in small (train tar of class tars, flat shuffled val tar, val labels
in every form) and the folders the usual recipe extracts from them, for demos, tests and benchmarks."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etl.synth import imagenet_size, jpeg_bytes, photo_like
from etl.synthlabels import write_label_forms

TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"


@dataclass(frozen=True)
class IlsvrcSpec:
    classes: int = 4
    per_class: int = 6
    val_per_class: int = 3
    seed: int = 0
    small: bool = True  # images of 40..120 pixels a side (tests); else ImageNet's sizes
    extracted: bool = True  # also write the recipe's folders: train/<wnid>/, val/<wnid>/


@dataclass(frozen=True)
class IlsvrcSet:
    """What make_ilsvrc wrote: the downloads, and (if asked) the recipe's extracted folders."""

    train_tar: Path
    val_tar: Path
    labels: dict[str, Path]  # val labels form -> its file (etl.sources.vallabels' form names)
    wnids: list[str]
    train_dir: Path
    val_dir: Path


def _wnids(rng: np.random.Generator, count: int) -> list[str]:
    numbers = rng.choice(np.arange(1_000_000, 9_999_999), size=count, replace=False)
    return [f"n{int(n):08d}" for n in numbers]


def _images(rng: np.random.Generator, count: int, small: bool) -> Iterator[bytes]:
    for _ in range(count):
        w, h = (int(rng.integers(40, 121)), int(rng.integers(40, 121))) if small else imagenet_size(rng)
        yield jpeg_bytes(rng, photo_like(rng, w, h))


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A GNU tar of (name, data) members, in memory (a class tar)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            add_member(tar, name, data)
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """One file member, dated as the ILSVRC2012 files are."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1336000000, 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_folder(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def make_ilsvrc(root: str | Path, spec: IlsvrcSpec = IlsvrcSpec()) -> IlsvrcSet:
    """root/ILSVRC2012_img_train.tar (one <wnid>.tar of <wnid>_<n>.JPEG per class, n neither fixed width
    nor consecutive), root/ILSVRC2012_img_val.tar (ILSVRC2012_val_<8 digits>.JPEG in shuffled order),
    root/labels/ (every labels form), and root/extracted/{train,val}/<wnid>/ as the recipe leaves them."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    wnids = _wnids(rng, spec.classes)
    train: dict[str, dict[str, bytes]] = {}
    for wnid in wnids:
        numbers = sorted(rng.choice(np.arange(1, 20 * spec.per_class + 2), size=spec.per_class, replace=False))
        train[wnid] = dict(zip([f"{wnid}_{int(n)}.JPEG" for n in numbers],
                               _images(rng, spec.per_class, spec.small), strict=True))
    classes_of_val = [w for w in wnids for _ in range(spec.val_per_class)]
    rng.shuffle(classes_of_val)
    wnid_of = {f"ILSVRC2012_val_{i:08d}": w for i, w in enumerate(classes_of_val, 1)}
    val = dict(zip([f"{s}.JPEG" for s in wnid_of], _images(rng, len(wnid_of), spec.small), strict=True))
    with tarfile.open(root / TRAIN_TAR, "w", format=tarfile.GNU_FORMAT) as tar:
        for wnid in rng.permutation(wnids):  # the member order is not the class order
            add_member(tar, f"{wnid}.tar", tar_bytes(train[str(wnid)]))
    with tarfile.open(root / VAL_TAR, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in rng.permutation(list(val)):
            add_member(tar, str(name), val[str(name)])
    labels = write_label_forms(root / "labels", wnid_of, wnids)
    extracted = root / "extracted"
    if spec.extracted:
        _write_folder(extracted / "train", {f"{w}/{n}": d for w, files in train.items() for n, d in files.items()})
        _write_folder(extracted / "val", {f"{wnid_of[n[:-5]]}/{n}": d for n, d in val.items()})
    return IlsvrcSet(root / TRAIN_TAR, root / VAL_TAR, labels, wnids, extracted / "train", extracted / "val")
