"""Folder source: a tree with one sub-folder of images per class (nested folders flattened into their class)."""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from etl.errors import UsageError
from etl.messages import Item
from etl.pagecache import InputSize, estimate_input
from etl.sources.base import Unreadable, byte_order
from etl.throttle import block_device
from etl.words import plural

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm"})
DANGLING = "links to nothing"  # how the note on them starts (--on-error fail stops at it)
BESIDE = "archives beside the class folders"  # how the note on them starts (--on-error fail stops at it)
PARTIAL = re.compile(r"\.(part|partial|crdownload)$", re.IGNORECASE)  # a download not finished
PACKED_TAR = re.compile(r"\.(tar\.(gz|bz2|xz|zst|lz|lzma|Z)|tgz|tbz2?|txz|tzst)$", re.IGNORECASE)


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")  # os.path.splitext, less its generality: this runs once per image of a scan
    return dot > name.rfind("/") + 1 and name[dot:].lower() in IMAGE_EXTENSIONS


def _unlistable(exc: OSError) -> None:
    """A folder that cannot be listed stops the plan: skipping it would drop its images, or its class and
    shift every later label, without a word."""
    raise UsageError(f"cannot list the folder {exc.filename}: {exc.strerror or exc}: make it readable, or move it "
                     "out of the input")


class Listing(NamedTuple):
    """One folder's sub-folders, image files, image files that are links, and other links whose target does not
    exist (a folder linked onto a disk not mounted: its images would be lost in silence)."""

    dirs: list[str]
    files: list[str]
    links: list[str]
    dangling: list[str]


def _listing(folder: str) -> Listing:
    """One folder's Listing, from one scandir (no stat per file; one per link that is no folder)."""
    found = Listing([], [], [], [])
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_dir():
                    found.dirs.append(e.name)
                elif is_image_name(e.name):
                    found.files.append(e.name)
                    if e.is_symlink():
                        found.links.append(e.name)
                elif e.is_symlink() and not os.path.exists(e.path):
                    found.dangling.append(e.name)
    except OSError as exc:
        _unlistable(exc)
    found.dirs.sort()
    return found


class TreeScan:
    """One scan of a class-folder tree: each class's images (nested folders flattened, linked folders followed,
    each real folder once per class), and the images that links put under two labels."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.owner: dict[tuple[int, int], str] = {}  # real folder -> the class that reached it first
        self.shared: list[tuple[str, str, str]] = []  # (class, its folder, the class that also holds it)
        self.links: list[tuple[str, str]] = []  # (class, image path that is a link)
        top = _listing(str(self.root))
        self.dangling = [os.path.join(self.root, name) for name in byte_order(top.dangling)]  # links to nothing
        self.archives = byte_order([e.name for e in os.scandir(self.root) if e.is_file() and _archive_advice(e.name)])
        self.classes = {name: self._scan_class(name) for name in byte_order(top.dirs)}

    def _scan_class(self, name: str) -> list[str]:
        found: list[str] = []
        seen: set[tuple[int, int]] = set()
        stack = [str(self.root / name)]
        while stack:  # depth first, sub-folders in sorted order
            folder = stack.pop()
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue  # a link loop, or one folder linked twice into this class
            seen.add((st.st_dev, st.st_ino))
            rel = os.path.relpath(folder, self.root)
            if self.owner.setdefault((st.st_dev, st.st_ino), name) != name:
                self.shared.append((name, rel, self.owner[(st.st_dev, st.st_ino)]))
            dirs, files, links, dangling = _listing(folder)
            stack.extend(os.path.join(folder, d) for d in reversed(dirs))
            found.extend(os.path.join(rel, f) for f in files)
            self.links.extend((name, os.path.join(rel, f)) for f in links)
            self.dangling.extend(os.path.join(folder, f) for f in byte_order(dangling))
        return byte_order(found)

    def lost(self) -> list[str]:
        """Notes on what stands for a class the scan cannot read: links whose target does not exist (a class
        folder on a disk not mounted), archives at the top (a class not extracted yet)."""
        notes = [dangling_note(self.dangling)] if self.dangling else []
        if self.archives:
            first = self.archives[0]
            more = f" and {len(self.archives) - 1:,d} more" if len(self.archives) > 1 else ""
            notes.append(f"{BESIDE} left out: {first}{more}, {_archive_advice(first, str(self.root))}")
        return notes

    def duplicates(self) -> list[str]:
        """Notes on the same real images under two labels, for the summary."""
        notes = [f"class '{name}' holds the folder {rel}, which class '{other}' holds too: its images are under "
                 "both labels" for name, rel, other in self.shared]
        across = [(name, rel, other) for name, rel in self.links
                  if (other := self._link_owner(rel)) not in (None, name)]
        if across:
            name, rel, other = across[0]
            notes.append(f"{plural(len(across), 'image')} under two labels through file links, e.g. {rel} (class "
                         f"'{name}') is an image of class '{other}'")
        return notes

    def _link_owner(self, rel: str) -> str | None:
        try:
            st = os.stat(os.path.dirname(os.path.realpath(self.root / rel)))
        except OSError:
            return None
        return self.owner.get((st.st_dev, st.st_ino))


def _archive_advice(name: str, root: str = ".") -> str:
    """What an archive among the class folders is likely to be, and how to make it the class folder it stands
    for, by its name; '' for a name no archive has."""
    if PARTIAL.search(name):
        return "an incomplete download: finish it, then extract it into its class folder"
    packed, zipped = PACKED_TAR.search(name), name.lower().endswith(".zip")
    if not packed and not zipped:
        return ""
    folder = shlex.quote(name[:packed.start()] if packed else name[:-4])
    there, quoted = shlex.quote(root), shlex.quote(name)
    unpack = f"tar -xf {quoted} -C {folder}" if packed else f"unzip -q {quoted} -d {folder}"
    what = "a compressed class tar?" if packed else "a zip of a class folder? If so,"
    return (f"{what} extract it into its class folder (cd {there} && mkdir -p {folder} && {unpack} && rm {quoted}), "
            "or move it out")


def dangling_note(paths: list[str]) -> str:
    """The note on links whose target does not exist, left out."""
    first = paths[0]
    return (f"{DANGLING}: {plural(len(paths), 'link')} left out, whose target does not exist (e.g. {first} -> "
            f"{os.readlink(first)}): mount or restore the target, or remove the link")


def scan_tree(root: str) -> dict[str, list[str]]:
    """Class name -> image paths (relative to root), classes in byte order."""
    return TreeScan(root).classes


def _kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device"}
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


@dataclass(frozen=True)
class FileReader:
    """Reads items as files under one root folder."""

    root: str

    def where(self, path: str) -> str:
        return os.path.join(self.root, path)

    def stamp(self, item: Item) -> int:
        """Size, modification time and inode (the link's target), each in its own bits: replacing a file, or
        writing into it, changes at least one. Not the change time: a chmod -R to fix one unreadable file
        would then refuse a resume. 0 for a file that cannot be looked at, which no real file's stamp is."""
        try:
            st = os.stat(self.where(item.path))
        except (OSError, ValueError):
            return 0
        return st.st_size << 128 | (st.st_mtime_ns % (1 << 64)) << 64 | st.st_ino

    def read(self, item: Item, charge: Callable[[int], None], drop_cache: bool) -> bytes:
        full = self.where(item.path)
        try:
            # Non-blocking: a FIFO named .JPEG would otherwise block the open until its image timeout.
            fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as fh:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise Unreadable(f"cannot read: not a regular file ({_kind(st.st_mode)})")
                charge(st.st_size)
                data = fh.read()
                if drop_cache:
                    # read once: do not push other programs' working set out of the page cache
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return data
        except FileNotFoundError:
            reason = "dangling symlink" if os.path.islink(full) else "file vanished since the scan"
            raise Unreadable(f"cannot read: {reason}") from None
        except PermissionError:
            raise Unreadable("cannot read: permission denied") from None
        except IsADirectoryError:
            raise Unreadable("cannot read: is a directory") from None
        except OSError as exc:
            raise Unreadable(f"cannot read: {exc.strerror or exc}") from None

    def fixable(self) -> bool:
        return True

    def list_prefix(self, relative: bool) -> str:
        return "" if relative else os.path.join(os.path.abspath(self.root), "")

    def input_size(self, sample: list[Item], count: int) -> InputSize:
        return estimate_input([self.where(it.path) for it in sample], count)

    def device(self) -> str | None:
        return block_device(self.root)


class FolderSource:
    """A class-folder tree: classes are its sub-folders in byte order."""

    def __init__(self, root: str, progress: bool = False, saved: Path | None = None) -> None:
        self.root = root
        self.scan: TreeScan | None = None  # set by classes(); a flat val set (images()) has none
        self.dangling: list[str] = []  # images()' links to nothing (a sub-folder on a disk not mounted)

    @staticmethod
    def accepts(path: str) -> bool:
        return os.path.isdir(path)

    def classes(self) -> dict[str, list[str]]:
        self.scan = TreeScan(self.root)
        return self.scan.classes

    def notes(self) -> list[str]:
        """What the scan found worth telling: links to nothing, images that links put under two labels (a flat
        val set: its links to nothing)."""
        if self.scan:
            return self.scan.lost() + self.scan.duplicates()
        return [dangling_note(byte_order(self.dangling))] if self.dangling else []

    def images(self) -> list[str]:
        """Every image under the folder, at its top or in sub-folders (a flat val set)."""
        found, stack = [], [""]
        self.dangling = []
        while stack:
            rel = stack.pop()
            folder = os.path.join(self.root, rel)
            dirs, files, _, dangling = _listing(folder)
            stack.extend(os.path.join(rel, d) for d in dirs)
            found.extend(os.path.join(rel, f) for f in files)
            self.dangling.extend(os.path.join(folder, f) for f in dangling)
        return byte_order(found)

    def locate(self, path: str) -> tuple[int, int]:
        return -1, -1

    def save(self, folder: Path) -> None:
        """Nothing to keep: a resumed run rescans the folder (and its stamps tell a changed file)."""

    def reader(self) -> FileReader:
        return FileReader(self.root)
