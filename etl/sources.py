"""Sources: find the class folders and images, split train/val, and fix the write order."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from etl.records import Item
from etl.settings import Settings, UsageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm"})
SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "split": 2}


@dataclass
class Split:
    """One database to build: its name, the folder paths are relative to, items in write order."""

    name: str
    root: str
    items: list[Item]

    def sample_paths(self, count: int = 256) -> list[str]:
        """Up to `count` of its files, evenly spread over the list (so over the classes), as full paths."""
        n, k = len(self.items), min(count, len(self.items))
        picks = sorted({round(j * (n - 1) / max(1, k - 1)) for j in range(k)})
        return [os.path.join(self.root, self.items[i].path) for i in picks]


@dataclass
class Plan:
    """The whole job: the label list and the splits, plus what was left out and why."""

    labels: list[str]
    splits: list[Split]
    notes: list[str] = field(default_factory=list)


def byte_order(names: list[str]) -> list[str]:
    """Plain byte order of the file-system names, as DIGITS sorts classes."""
    return sorted(names, key=os.fsencode)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan_class_folder(class_dir: Path) -> list[str]:
    """Image files under one class folder, nested folders flattened, relative to its parent.

    Linked folders are followed, each real folder once: a link loop cannot repeat or hang the scan.
    """
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, class_dir.parent)
        found.extend(os.path.join(rel_dir, f) for f in filenames if is_image_name(f))
    return byte_order(found)


def scan_tree(root: str) -> dict[str, list[str]]:
    """Class name -> image paths (relative to root), classes in byte order."""
    top = Path(root)
    names = byte_order([e.name for e in os.scandir(top) if e.is_dir()])
    return {name: scan_class_folder(top / name) for name in names}


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_SEED_OFFSET[purpose]])


def _limit_classes(classes: dict[str, list[str]], s: Settings, notes: list[str]) -> dict[str, list[str]]:
    kept: dict[str, list[str]] = {}
    for name, files in classes.items():
        if len(files) < s.min_per_class:
            notes.append(f"class '{name}' dropped: {len(files)} images, fewer than --min-per-class {s.min_per_class}")
            continue
        if s.max_per_class is not None and len(files) > s.max_per_class:
            picked = _rng(s.seed, "split").permutation(len(files))[: s.max_per_class]
            files = [files[i] for i in sorted(picked)]
        kept[name] = files
    return kept


def _split_by_pct(classes: dict[str, list[str]], s: Settings) -> tuple[list, list]:
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    rng = _rng(s.seed, "split")
    for label, files in enumerate(classes.values()):
        n_val = int(len(files) * s.effective_val_pct / 100 + 0.5)
        n_val = min(n_val, len(files) - 1)
        order = rng.permutation(len(files))
        val.extend((files[i], label) for i in sorted(order[:n_val]))
        train.extend((files[i], label) for i in sorted(order[n_val:]))
    return train, val


def _val_folder(s: Settings, labels: list[str], notes: list[str]) -> list[tuple[str, int]]:
    assert s.val_dir is not None
    val_classes = scan_tree(s.val_dir)
    unknown = [name for name in val_classes if name not in labels]
    if unknown:
        raise UsageError(f"val folder has classes the train folder lacks: {', '.join(unknown[:5])}")
    missing = [name for name in labels if not val_classes.get(name)]
    if missing:
        notes.append(f"{len(missing)} classes have no val images, e.g. '{missing[0]}'")
    return [(path, labels.index(name)) for name, files in val_classes.items() for path in files]


def _ordered(name: str, root: str, pairs: list[tuple[str, int]], s: Settings) -> Split:
    if s.shuffle:
        order = _rng(s.seed, name).permutation(len(pairs))  # type: ignore[arg-type]
        pairs = [pairs[i] for i in order]
    return Split(name, root, [Item(i, path, label) for i, (path, label) in enumerate(pairs)])


def plan(s: Settings) -> Plan:
    """Scan the folders and decide every database's content and order."""
    notes: list[str] = []
    classes = _limit_classes(scan_tree(s.train_dir), s, notes)
    if not any(classes.values()):
        raise UsageError(f"no images found in class sub-folders of {s.train_dir}")
    labels = list(classes)
    if s.val_dir is not None:
        train = [(path, label) for label, files in enumerate(classes.values()) for path in files]
        val = _val_folder(s, labels, notes)
        val_root = s.val_dir
    else:
        train, val = _split_by_pct(classes, s)
        val_root = s.train_dir
    splits = [_ordered("train", s.train_dir, train, s)]
    if val:
        splits.append(_ordered("val", val_root, val, s))
    return Plan(labels, splits, notes)
