"""Corpus: the class trees the bench measures on (generated or copied), warming them, and empty listing trees."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from etl.messages import Item
from etl.sources.archive import ArchiveSource, TarFolderSource
from etl.sources.registry import find_kind, open_source
from etl.synth import TreeSpec, make_tree


def build_corpus(work: Path, src: str | None, generate: int, repeat: int = 1) -> Path:
    """A class tree to measure on: generated (ImageNet-like), or real files copied `repeat` times.

    A flat folder of ImageNet files named <wnid>_*.JPEG is sorted into class folders by wnid.
    """
    tree = work / "tree"
    if src is not None and is_archive(src):
        return _from_archive(src, tree, repeat)
    if src is None:
        classes = max(1, min(100, generate // 30))
        per_class = -(-generate // classes)
        make_tree(tree, TreeSpec(classes=classes, per_class=per_class, seed=11, awkward=False))
        return tree
    root = Path(src)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    flat = all(p.parent == root for p in files)
    for k in range(repeat):
        for p in files:
            cls = p.name.split("_")[0] if flat else p.parent.name
            dest = tree / cls / (p.name if repeat == 1 else f"{p.stem}_r{k}{p.suffix}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
    return tree


def is_archive(src: str) -> bool:
    """A tar (or a folder of class tars) rather than a folder of image files."""
    return find_kind(src) in (ArchiveSource, TarFolderSource)


def _from_archive(src: str, tree: Path, repeat: int) -> Path:
    """The archive's images written out as a class tree (the kernels and the baselines read files)."""
    source = open_source(src)
    reader = source.reader()
    for name, paths in source.classes().items():
        (tree / name).mkdir(parents=True, exist_ok=True)
        for path in paths:
            data = reader.read(Item(0, path, 0, *source.locate(path)), lambda size: None, False)
            p = Path(path)
            for k in range(repeat):
                (tree / name / (p.name if repeat == 1 else f"{p.stem}_r{k}{p.suffix}")).write_bytes(data)
    return tree


def corpus_files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*") if p.is_file())


def warm(files: list[Path]) -> None:
    for p in files:
        p.read_bytes()


def empty_tree(root: Path, n: int, per_class: int = 1300) -> None:
    """n empty ImageNet-named files in classes of `per_class`: a tree to list, not to read."""
    for i in range(n):
        folder = root / f"n{i // per_class:08d}"
        if i % per_class == 0:
            folder.mkdir(parents=True)
        os.close(os.open(folder / f"n{i // per_class:08d}_{i}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))
