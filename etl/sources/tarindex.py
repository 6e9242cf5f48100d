"""Tar index: an archive input's image members and their byte ranges, saved beside the checkpoint so that a
resumed run reads it back instead of rescanning, and refuses an archive that changed since."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import zipfile
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from etl.checkpoint import fsync_write
from etl.errors import UsageError

FORMAT = 1
Identity = dict[str, list[int]]  # file name -> [size, mtime_ns] of each archive file the index covers


@dataclass
class ArchiveIndex:
    """Every image member found: its path as train.txt names it (relative to the input), where its bytes
    lie, and its group (the inner tar it is in; group 0: none). Paths in a list, the rest in arrays, and a
    dict from path to position: ~200 bytes an image, where 1.28 M TarInfo objects would take ~1 GB."""

    paths: list[str] = field(default_factory=list)
    offsets: array = field(default_factory=lambda: array("q"))
    sizes: array = field(default_factory=lambda: array("q"))
    group: array = field(default_factory=lambda: array("i"))
    groups: list[str] = field(default_factory=lambda: [""])
    position: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, path: str, offset: int, size: int, group: int = 0) -> bool:
        """False when the path is there already (a duplicate member: the later one wins, as tar extracts)."""
        at = self.position.setdefault(path, len(self.paths))
        if at < len(self.paths):
            self.offsets[at], self.sizes[at], self.group[at] = offset, size, group
            return False
        self.paths.append(path)
        self.offsets.append(offset)
        self.sizes.append(size)
        self.group.append(group)
        return True

    def add_many(self, paths: list[str], offsets: list[int], sizes: list[int], group: int) -> list[str]:
        """add() for many (one inner tar's images); returns the paths that were there already. In bulk where
        no path repeats, which is every time but for odd archives: the index of ImageNet in seconds."""
        if self.position.keys().isdisjoint(paths) and len(set(paths)) == len(paths):
            n = len(self.paths)
            self.position.update(zip(paths, range(n, n + len(paths)), strict=True))
            self.paths.extend(paths)
            self.offsets.extend(offsets)
            self.sizes.extend(sizes)
            self.group.extend([group] * len(paths))
            return []
        return [p for p, o, s in zip(paths, offsets, sizes, strict=True) if not self.add(p, o, s, group)]

    def drop_group(self, group: int) -> int:
        """Leave out every image of one group (an inner tar that a later copy replaces); how many. Rare: the
        arrays are rebuilt."""
        keep = [at for at, g in enumerate(self.group) if g != group]
        dropped = len(self.paths) - len(keep)
        if dropped:
            self.paths = [self.paths[at] for at in keep]
            self.offsets = array("q", [self.offsets[at] for at in keep])
            self.sizes = array("q", [self.sizes[at] for at in keep])
            self.group = array("i", [self.group[at] for at in keep])
            self.position = {path: at for at, path in enumerate(self.paths)}
        return dropped

    def new_group(self, name: str) -> int:
        self.groups.append(name)
        return len(self.groups) - 1

    def span(self, path: str) -> tuple[int, int]:
        at = self.position[path]
        return self.offsets[at], self.sizes[at]

    def grouped(self) -> tuple[dict[str, list[str]], list[str]]:
        """(each inner tar's images, the images outside any), in index order."""
        by_tar: dict[str, list[str]] = {name: [] for name in self.groups[1:]}
        loose: list[str] = []
        for path, g in zip(self.paths, self.group, strict=True):
            (by_tar[self.groups[g]] if g else loose).append(path)
        return by_tar, loose


def identity(files: list[str]) -> Identity:
    """What tells an archive changed: each file's size and modification time (reading 140 GB to hash it
    would cost what the conversion costs)."""
    stats = {path: os.stat(path) for path in files}
    return {os.path.basename(path): [st.st_size, st.st_mtime_ns] for path, st in stats.items()}


def saved_name(input_path: str) -> str:
    """The index file's name in the checkpoint folder: one per input, whatever role it plays."""
    return f"index.{hashlib.sha256(os.path.realpath(input_path).encode()).hexdigest()[:16]}.npz"


def save(index: ArchiveIndex, folder: Path, input_path: str, files: Identity) -> None:
    meta = {"format": FORMAT, "input": os.path.realpath(input_path), "files": files, "groups": index.groups,
            "notes": index.notes}
    blob = b"\0".join(p.encode("utf-8", "surrogateescape") for p in index.paths)
    buf = io.BytesIO()
    np.savez(buf, offsets=np.frombuffer(index.offsets, np.int64), sizes=np.frombuffer(index.sizes, np.int64),
             group=np.frombuffer(index.group, np.int32), paths=np.frombuffer(blob, np.uint8),
             meta=np.frombuffer(json.dumps(meta).encode("utf-8", "surrogateescape"), np.uint8))
    fsync_write(folder / saved_name(input_path), buf.getvalue())


def load(folder: Path, input_path: str, files: Identity) -> ArchiveIndex | None:
    """The index an earlier run of this job saved (None if there is none); UsageError if the archive
    changed since, or the saved file is damaged."""
    path = folder / saved_name(input_path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(saved["meta"].tobytes().decode("utf-8", "surrogateescape"))
            blob, offsets, sizes, group = (saved[k] for k in ("paths", "offsets", "sizes", "group"))
        saved_files, groups, notes = meta["files"], meta["groups"], meta["notes"]
        paths = blob.tobytes().decode("utf-8", "surrogateescape").split("\0") if blob.size else []
        _check_saved(saved_files, groups, notes, paths, offsets, sizes, group)
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zipfile.BadZipFile) as exc:
        raise UsageError(f"the saved archive index {path} is damaged ({type(exc).__name__}: {exc}): remove it and "
                         "resume again (rm " + shlex.quote(str(path)) + "), which rebuilds it from the archive and "
                         "keeps the work done") from None
    if meta.get("format") != FORMAT or saved_files != files:
        changed = next((n for n in sorted(set(files) | set(saved_files)) if saved_files.get(n) != files.get(n)), "")
        which = "it" if not changed or changed == os.path.basename(input_path) else changed
        raise UsageError(f"--resume: {input_path} changed since the first run ({which}: added, removed, or another "
                         "size or modification time); convert again with --overwrite")
    return ArchiveIndex(paths, array("q", offsets.tobytes()), array("q", sizes.tobytes()),
                        array("i", group.tobytes()), groups, {p: i for i, p in enumerate(paths)}, notes)


def _check_saved(files: object, groups: object, notes: object, paths: list[str], offsets: np.ndarray,
                 sizes: np.ndarray, group: np.ndarray) -> None:
    """ValueError where a saved index is not what save() writes (damaged or edited): using it would read
    the wrong bytes or stop later with a traceback."""
    if not isinstance(files, dict) or not all(isinstance(v, list) for v in files.values()):
        raise ValueError("its 'files' is not a table of archive files")
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups) or not groups:
        raise ValueError("its 'groups' is not a list of inner tar names")
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ValueError("its 'notes' is not a list of notes")
    kinds = ((offsets, np.int64), (sizes, np.int64), (group, np.int32))
    if any(a.ndim != 1 or a.dtype != kind or len(a) != len(paths) for a, kind in kinds):
        raise ValueError(f"its arrays do not hold one offset, size and group for each of its {len(paths)} paths")
    if len(paths) and (group.min() < 0 or group.max() >= len(groups) or offsets.min() < 0 or sizes.min() < 0):
        raise ValueError("it has an offset, size or group out of range")
