"""Corpus: the class trees the bench measures on (generated or copied), warming them, and empty listing trees."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from etl.errors import UsageError
from etl.messages import Item
from etl.sources.archive import ArchiveSource, TarFolderSource
from etl.sources.folder import FolderSource
from etl.sources.registry import find_kind, open_source
from etl.synth import TreeSpec, make_tree


def build_corpus(work: Path, src: str | None, generate: int, repeat: int = 1) -> Path:
    """A class tree to measure on: generated (ImageNet-like), or real files copied `repeat` times.

    A flat folder of ImageNet files named <wnid>_*.JPEG is sorted into class folders by wnid. A corpus
    without an image is refused: every figure would be a division by zero (or a loop that never ends).
    """
    tree = work / "tree"
    if src is not None and is_archive(src):
        _from_archive(src, tree, repeat)
    elif src is None:
        classes = max(1, min(100, generate // 30))
        per_class = -(-generate // classes)
        make_tree(tree, TreeSpec(classes=classes, per_class=per_class, seed=11, awkward=False))
    else:
        _from_folder(src, tree, repeat)
    if not corpus_files(tree):
        raise UsageError(f"--src {src} holds no images: give a folder of class folders of JPEGs (as etl convert "
                         "takes), a flat folder of ImageNet <wnid>_*.JPEG, or an archive of them")
    return tree


def _from_folder(src: str, tree: Path, repeat: int) -> None:
    """The images `etl convert` would read (its folder scan: linked folders followed, nested ones flattened into
    their class), or those of a flat folder named <wnid>_*, copied as class folders."""
    source = FolderSource(src)
    classes = {name: files for name, files in source.classes().items() if files}
    if classes:
        pairs = [(name, path) for name, files in classes.items() for path in files]
    else:  # no class folder holds an image: a flat folder
        pairs = [(os.path.basename(path).split("_")[0], path) for path in source.images()]
    for k in range(repeat):
        for name, path in pairs:
            # a nested image keeps its sub-folders in its name: two nested 1.jpg of a class stay two files
            rel = path.split("/", 1)[1] if classes else path
            p = Path(rel.replace("/", "__"))
            dest = tree / name / (p.name if repeat == 1 else f"{p.stem}_r{k}{p.suffix}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(src, path), dest)


def is_archive(src: str) -> bool:
    """A tar (or a folder of class tars) rather than a folder of image files."""
    return find_kind(src) in (ArchiveSource, TarFolderSource)


def _from_archive(src: str, tree: Path, repeat: int) -> None:
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


def corpus_files(tree: Path) -> list[Path]:
    """The files of a corpus this module built (real folders, no links)."""
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
