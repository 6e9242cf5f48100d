"""Folder source: a tree with one sub-folder of images per class (nested folders flattened into their class)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from etl.errors import UsageError
from etl.pagecache import InputSize, estimate_input
from etl.sources.base import Unreadable, byte_order
from etl.throttle import block_device

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm"})


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan_class_folder(class_dir: Path) -> list[str]:
    """Image files under one class folder, nested folders flattened, relative to its parent.

    Linked folders are followed, each real folder once: a link loop cannot repeat or hang the scan.
    """
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=_unlistable, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, class_dir.parent)
        found.extend(os.path.join(rel_dir, f) for f in filenames if is_image_name(f))
    return byte_order(found)


def _unlistable(exc: OSError) -> None:
    """A folder that cannot be listed stops the plan: skipping it would drop its images, or its class and
    shift every later label, without a word."""
    raise UsageError(f"cannot list the folder {exc.filename}: {exc.strerror or exc}: make it readable, or move it "
                     "out of the input")


def scan_tree(root: str) -> dict[str, list[str]]:
    """Class name -> image paths (relative to root), classes in byte order."""
    top = Path(root)
    try:
        with os.scandir(top) as entries:
            names = byte_order([e.name for e in entries if e.is_dir()])
    except OSError as exc:
        _unlistable(exc)
    return {name: scan_class_folder(top / name) for name in names}


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

    def read(self, path: str, charge: Callable[[int], None], drop_cache: bool) -> bytes:
        full = self.where(path)
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

    def list_prefix(self, relative: bool) -> str:
        return "" if relative else os.path.join(os.path.abspath(self.root), "")

    def input_size(self, sample: list[str], count: int) -> InputSize:
        return estimate_input([self.where(p) for p in sample], count)

    def device(self) -> str | None:
        return block_device(self.root)


class FolderSource:
    """A class-folder tree: classes are its sub-folders in byte order."""

    def __init__(self, root: str) -> None:
        self.root = root

    @staticmethod
    def accepts(path: str) -> bool:
        return os.path.isdir(path)

    def classes(self) -> dict[str, list[str]]:
        return scan_tree(self.root)

    def reader(self) -> FileReader:
        return FileReader(self.root)
