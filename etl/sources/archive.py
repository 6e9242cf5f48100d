"""Archive sources: plain tars read in place (a tar of class tars, a folder of class tars, a tar of class
folders, a flat tar), indexed once by their headers; workers read each image with one positioned read."""

from __future__ import annotations

import os
import posixpath
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from etl.errors import UsageError
from etl.messages import Item
from etl.pagecache import InputSize, resident_share, scaled_sample
from etl.progress import ProgressBar
from etl.sources import tarindex
from etl.sources.base import Unreadable, byte_order
from etl.sources.folder import BESIDE, DANGLING, PARTIAL, dangling_note, is_image_name
from etl.sources.tarindex import ArchiveIndex, Identity, identity
from etl.sources.tarscan import (
    BLOCK,
    DIRECTORY,
    HARD_LINK,
    LINKS,
    REGULAR,
    Header,
    TarScan,
    looks_like_tar,
    scan_tar,
)
from etl.throttle import block_device
from etl.words import plural

# magic -> (format, the command that decompresses beside the file, the one that replaces it)
COMPRESSED = {b"\x1f\x8b": ("gzip", "gunzip -k", "gunzip"), b"BZh": ("bzip2", "bunzip2 -k", "bunzip2"),
              b"\xfd7zXZ\x00": ("xz", "unxz -k", "unxz"), b"\x28\xb5\x2f\xfd": ("zstd", "unzstd", "unzstd --rm")}
# the names each tool decompresses (it refuses others: gunzip x.tar says 'unknown suffix'), the first its own
SUFFIXES = {"gzip": (".gz", ".tgz"), "bzip2": (".bz2", ".tbz2", ".tbz"), "xz": (".xz", ".txz"),
            "zstd": (".zst", ".tzst")}
ProgressFn = Callable[[int], None]  # bytes of the input walked so far
TAR_NAME = re.compile(r"\.(tar(\.\w+)?|tgz|tbz2?|txz)$", re.IGNORECASE)
LINK_NOTE = "symbolic links (etl follows no links inside archives)"
UNLINKED_NOTE = "hard links to no earlier file of their tar"
NESTED_NOTE = "tars inside a class tar (tar -x of the class tar gives the .tar file, not its images)"
INCOMPLETE = "incomplete archive"  # how a note about a cut or damaged tar starts (--on-error fail stops at it)


def stops_under_fail(note: str) -> bool:
    """Whether --on-error fail stops at this note: a cut or damaged archive, a link to nothing, an archive
    among class folders, a hard link to no earlier file (tar -x fails there), all of which lose data."""
    note = note.removeprefix("val: ")
    return note.startswith((INCOMPLETE, DANGLING, BESIDE)) or UNLINKED_NOTE in note


def packed(head: bytes) -> tuple[str, str, str] | None:
    """COMPRESSED's (format, commands) for data that starts with these bytes, if compressed."""
    return next((what for magic, what in COMPRESSED.items() if head.startswith(magic)), None)


def decompressing(command: str, fmt: str, path: str) -> str:
    """The command line that decompresses path, renamed first where the tool would refuse its name."""
    if path.lower().endswith(SUFFIXES[fmt]):
        return f"{command} {shlex.quote(path)}"
    renamed = shlex.quote(path + SUFFIXES[fmt][0])
    return f"mv {shlex.quote(path)} {renamed} && {command} {renamed}"


def compression(path: str) -> tuple[str, str, str] | None:
    """(format, command that decompresses it beside it, command that replaces it) for a compressed file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    return packed(head)


def is_tar(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.path.isfile(path) and looks_like_tar(fd, 0)
    finally:
        os.close(fd)


def refuse_compressed(path: str, in_folder: bool = False) -> None:
    """in_folder: a class tar of a folder of them, decompressed in its place (a copy left beside the plain
    tar would be refused again)."""
    found = compression(path)
    if found:
        fmt, beside, replacing = found
        then = "then give the folder again" if in_folder else "and give the plain .tar"
        raise UsageError(f"{path} is a {fmt}-compressed archive, which cannot be read in place: decompress it "
                         f"first ({decompressing(replacing if in_folder else beside, fmt, path)}) {then}")


def refuse_compressed_member(archive: str, name: str, head: bytes) -> None:
    """A compressed class tar inside the train tar: leaving it out would shift every later class's label."""
    found = packed(head)
    if found:
        fmt, _, replacing = found
        folder = (archive[:-4] if archive.endswith(".tar") else archive) + "_classes"
        there, member = shlex.quote(folder), decompressing(replacing, fmt, f"{folder}/{name}")
        raise UsageError(f"{archive} holds {name}, a {fmt}-compressed archive, which cannot be read in place: "
                         f"extract the class tars and decompress it first (mkdir {there} && tar -xf "
                         f"{shlex.quote(archive)} -C {there} && {member}), then give the folder {folder}")


class Tally:
    """What a scan left out, and why, as counted notes with an example each."""

    def __init__(self) -> None:
        self.seen: dict[str, list[str]] = {}

    def add(self, why: str, name: str) -> None:
        self.seen.setdefault(why, []).append(name)

    def notes(self) -> list[str]:
        return [f"{plural(len(names), 'archive member')} left out: {why} (e.g. {names[0]!r})"
                for why, names in self.seen.items()]


def plain(name: str) -> str:
    """A member name without the leading './' that `tar cf x.tar .` writes (it would show in the list files)."""
    while name.startswith("./"):
        name = name[2:]
    return name


def unsafe(name: str) -> bool:
    """A name tar itself would not extract as given: absolute, or climbing out with '..'."""
    return name.startswith("/") or (".." in name and ".." in name.split("/"))


class TarIndexer:
    """Walks one tar file (and the tars inside it) into an ArchiveIndex, each image in the group of the
    inner tar that holds it (or in `group`, for all of them: one class tar of a folder of them)."""

    def __init__(self, path: str, index: ArchiveIndex, progress: ProgressFn | None = None, group: int = 0) -> None:
        self.path, self.index, self.progress, self.group = path, index, progress or (lambda done: None), group
        self.tally = Tally()
        self.duplicates: list[str] = []
        self.class_tars: dict[str, int] = {}  # each inner tar's path -> its group (a later copy replaces it)

    def run(self, prefix: str = "") -> ArchiveIndex:
        """prefix: what goes before every member's path (a folder of tars: the tar's own name)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            end = os.fstat(fd).st_size
            outer = scan_tar(fd, 0, end)
            if outer.damage:
                what = prefix.rstrip("/") or os.path.basename(self.path)  # a folder's tar: prefix is its name
                whole = sum(1 for entry in outer.entries if entry.offset + entry.size <= end)
                self._cut(what, outer.damage, f"usable: its {plural(whole, 'member')} before that point; nothing "
                                              "after it is read")
            for entry, member in zip(outer.entries, resolve_links(outer), strict=True):
                self._member(fd, member, prefix, end)
                self.progress(entry.offset + entry.size)  # the entry's own place: a link's target lies before it
            self.progress(end)  # the end-of-archive blocks and the padding after them: the whole file is done
        finally:
            os.close(fd)
        self.index.notes.extend(self.tally.notes())
        if self.duplicates:
            self.index.notes.append(f"{plural(len(self.duplicates), 'duplicate member name')} (e.g. "
                                    f"{self.duplicates[0]!r}): the last copy of each is used, as tar extracts")
        return self.index

    def _member(self, fd: int, entry: Header, prefix: str, end: int) -> None:
        name = plain(entry.name)
        if entry.kind == DIRECTORY:
            return
        if entry.kind in REGULAR and not unsafe(name):
            whole = entry.offset + entry.size <= end  # else the member the file ends in: reported by _cut
            if is_image_name(name):
                return self._add(prefix + name, entry, self.group) if whole else None
            if entry.size >= BLOCK and looks_like_tar(fd, entry.offset):  # even cut off: its whole images count
                if self.group:  # a tar inside a class tar of a folder of them
                    return self.tally.add(NESTED_NOTE, prefix + name)
                return self._inner(fd, Header((name, *entry[1:])), prefix, end)
            if not whole:
                return None
            if not self.group and "/" not in name and TAR_NAME.search(name):  # at the top, where class tars are
                refuse_compressed_member(self.path, name, os.pread(fd, 8, entry.offset))
            if not self.group and prefix + name in self.class_tars:  # a later copy, empty: tar -x keeps it
                self._class_group(prefix + name, " (which holds no images)")
                return None
        self._left_out(entry.kind, prefix + name, name)

    def _inner(self, fd: int, tar: Header, prefix: str, end: int) -> None:
        """A tar inside the tar: a class. Its members' places are its place plus theirs."""
        group = self.group or self._class_group(prefix + tar.name)
        inner_end = min(tar.offset + tar.size, end)  # a member past it would read the next member's bytes
        inner = scan_tar(fd, tar.offset, inner_end)
        base = f"{prefix}{tar.name}/"
        paths, offsets, sizes = [], [], []
        for name, kind, offset, size in resolve_links(inner):  # once per image of ImageNet: kept lean
            if name[:2] == "./":
                name = plain(name)
            if kind in REGULAR and is_image_name(name) and not unsafe(name):
                if offset + size <= inner_end:
                    paths.append(base + name)
                    offsets.append(offset)
                    sizes.append(size)
            elif kind in REGULAR and not unsafe(name) and size >= BLOCK and looks_like_tar(fd, offset):
                self.tally.add(NESTED_NOTE, f"{prefix}{tar.name}/{name}")
            elif kind != DIRECTORY:
                self._left_out(kind, f"{tar.name}/{name}", name)
        self.duplicates += self.index.add_many(paths, offsets, sizes, group)
        damage = inner.damage or ("the file ends inside it" if tar.offset + tar.size > end else "")
        if damage:  # after the loop: the note says how many of its images are used
            self._cut(prefix + tar.name, damage, f"usable: its {plural(len(paths), 'image')} before that point")

    def _class_group(self, name: str, last: str = "") -> int:
        """A new group for an inner tar; a second copy of one (tar rf of an updated class) replaces the first,
        as tar -x leaves only the last copy's file. last: what the note says of the last copy."""
        earlier = self.class_tars.get(name)
        if earlier is not None:
            dropped = self.index.drop_group(earlier)
            self.index.notes.append(f"{name} is in the archive more than once: the last copy{last} is used, as tar "
                                    f"-x keeps it ({plural(dropped, 'image')} of an earlier copy left out)")
        self.class_tars[name] = self.index.new_group(name)
        return self.class_tars[name]

    def _left_out(self, kind: bytes, shown: str, name: str) -> None:
        """A member that is no image to read (in the tar, or in an inner tar), counted under its reason."""
        if kind == HARD_LINK:
            self.tally.add(UNLINKED_NOTE, shown)
        elif kind in LINKS:
            self.tally.add(LINK_NOTE, shown)
        elif kind not in REGULAR:
            self.tally.add("not regular files", shown)
        elif unsafe(name):
            self.tally.add("unsafe names (absolute, or with '..')", shown)
        else:
            self.tally.add("not images", shown)

    def _add(self, path: str, entry: Header, group: int) -> None:
        if not self.index.add(path, entry.offset, entry.size, group):
            self.duplicates.append(path)

    def _cut(self, what: str, damage: str, used: str) -> None:
        self.index.notes.append(f"{INCOMPLETE}: {what} stops early ({damage}); {used}")


def resolve_links(scan: TarScan) -> list[Header]:
    """The scan's entries, each hard link as a file of its target's bytes, as tar -x makes it (the target
    is an earlier file of the same tar). A link to no such file stays a link, to be left out with a note."""
    if not scan.targets:
        return scan.entries
    entries = list(scan.entries)
    files: dict[str, Header] = {}
    for at, entry in enumerate(entries):
        target = scan.targets.get(at)
        if target is not None and (found := files.get(plain(target))) is not None:
            entry = entries[at] = Header((entry.name, found.kind, found.offset, found.size))
        if entry.kind in REGULAR:
            files[plain(entry.name)] = entry
    return entries


def members(paths: list[str]) -> Iterator[tuple[str, str]]:
    """(class, path) of each image path of a tar of class folders: the folders under the longest leading
    folder all images share (train/n01440764/x.JPEG: 'n01440764'); images outside a class folder: class ''."""
    parts = [p.split("/") for p in paths]
    depth = 0
    while True:  # go down while every image in a folder here is in the same one, and some sit deeper still
        inside = [p for p in parts if len(p) > depth + 1]
        if not any(len(p) > depth + 2 for p in inside) or len({p[depth] for p in inside}) != 1:
            break
        depth += 1
    for path, p in zip(paths, parts, strict=True):
        yield (p[depth] if len(p) > depth + 1 else ""), path


def class_of_tar(name: str) -> str:
    """A class tar's class: its file name without the extension (n01440764.tar: n01440764)."""
    return posixpath.splitext(posixpath.basename(name))[0]


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    """size bytes from offset, or fewer where the file ends (one pread returns at most ~2 GiB on Linux)."""
    parts, done = [], 0
    while done < size:
        part = os.pread(fd, size - done, offset + done)
        if not part:
            break
        parts.append(part)
        done += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


@dataclass(frozen=True)
class ArchiveReader:
    """Reads items as byte ranges of one tar file, or (a folder of tars) of the tar their path starts with."""

    root: str
    folder: bool  # the root is a folder of tars

    def file_of(self, path: str) -> str:
        return os.path.join(self.root, path.split("/", 1)[0]) if self.folder else self.root

    def where(self, path: str) -> str:
        return f"{self.root}/{path}"

    def read(self, item: Item, charge: Callable[[int], None], drop_cache: bool) -> bytes:
        try:
            fd = os.open(self.file_of(item.path), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise Unreadable(f"cannot read the archive: {exc.strerror or exc}") from None
        try:
            charge(item.size)
            data = _pread_all(fd, item.size, item.offset)
            if drop_cache:  # read once: let these pages go, not other programs' working set
                os.posix_fadvise(fd, item.offset, item.size, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            raise Unreadable(f"cannot read: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        if len(data) < item.size:
            raise Unreadable(f"cannot read: the archive ends {item.size - len(data)} bytes into this member "
                             "(it changed since the scan)")
        return data

    def stamp(self, item: Item) -> int:
        """Where the member lies: the archive's own size and time are checked as a whole at resume."""
        return item.offset << 64 | item.size

    def fixable(self) -> bool:
        return False

    def list_prefix(self, relative: bool) -> str:
        return "" if relative else os.path.join(os.path.abspath(self.root), "")

    def input_size(self, sample: list[Item], count: int) -> InputSize:
        cached = [round(it.size * resident_share(self.file_of(it.path), it.size, it.offset)) for it in sample]
        return scaled_sample([it.size for it in sample], cached, count)

    def device(self) -> str | None:
        return block_device(self.root)


def _scan_progress(total: int, show: bool) -> ProgressBar:
    return ProgressBar(total=total, unit="B", unit_scale=True, desc="indexing", disable=not show, leave=False,
                mininterval=0.5)


def _class_tars(by_tar: dict[str, list[str]], loose: list[str], notes: list[str]) -> dict[str, list[str]]:
    classes: dict[str, list[str]] = {}
    for tar, paths in by_tar.items():
        classes.setdefault(class_of_tar(tar), []).extend(paths)
    if loose:
        notes.append(f"{plural(len(loose), 'image')} outside the class tars left out (e.g. {loose[0]!r})")
    return {name: byte_order(classes[name]) for name in byte_order(list(classes))}


def _class_folders(paths: list[str], notes: list[str]) -> dict[str, list[str]]:
    classes: dict[str, list[str]] = {}
    outside = []
    for name, path in members(paths):
        (classes.setdefault(name, []) if name else outside).append(path)
    if outside:
        notes.append(f"{plural(len(outside), 'image')} outside class folders left out (e.g. {outside[0]!r})")
    return {name: byte_order(classes[name]) for name in byte_order(list(classes))}


def _holds_images(folder: str) -> bool:
    """Whether any image lies in the folder or below it (folder links followed, each real folder once;
    a folder that cannot be listed holds none that etl could read)."""
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        path = stack.pop()
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(path) as entries:
                found = list(entries)
        except OSError:
            continue
        if any(is_image_name(e.name) for e in found if not e.is_dir()):
            return True
        stack.extend(e.path for e in found if e.is_dir())
    return False


class ArchiveSource:
    """One plain tar: of class tars (ILSVRC2012_img_train.tar), of class folders, or flat (val, with labels).

    saved: the checkpoint folder of the run being resumed, where the first run saved the index."""

    def __init__(self, path: str, progress: bool = False, saved: Path | None = None) -> None:
        self.path, self.show, self.saved = path, progress, saved
        self._index: ArchiveIndex | None = None
        self._files: Identity = {}
        self.class_notes: list[str] = []  # what choosing the classes left out (not kept with the index)

    @staticmethod
    def accepts(path: str) -> bool:
        return os.path.isfile(path) and (compression(path) is not None or is_tar(path))

    def tar_files(self) -> list[str]:
        return [self.path]

    @property
    def index(self) -> ArchiveIndex:
        if self._index is None:
            refuse_compressed(self.path)
            files = self.tar_files()
            self._files = identity(files)
            loaded = tarindex.load(self.saved, self.path, self._files) if self.saved else None
            self._index = loaded or self._walk(files)
        return self._index

    def _walk(self, files: list[str]) -> ArchiveIndex:
        index = ArchiveIndex()
        with _scan_progress(os.path.getsize(self.path), self.show) as bar:
            TarIndexer(self.path, index, lambda done: bar.update(done - bar.n)).run()
        return index

    def save(self, folder: Path) -> None:
        """Keep the index with the checkpoint: a resumed run reads it instead of rescanning."""
        tarindex.save(self.index, folder, self.path, self._files)

    def classes(self) -> dict[str, list[str]]:
        """Class tars when there are some and no images outside them, or they sit at the top; otherwise
        class folders (a stray tar inside a class folder is left out, as extraction would leave it)."""
        by_tar, loose = self.index.grouped()
        self.class_notes = []
        if by_tar and (not loose or any("/" not in tar for tar in by_tar)):
            return _class_tars(by_tar, loose, self.class_notes)
        nested = [path for paths in by_tar.values() for path in paths]
        if nested:
            self.class_notes.append(f"{plural(len(nested), 'image')} inside tars within class folders left out "
                                    f"(e.g. {nested[0]!r})")
        return _class_folders(loose, self.class_notes)

    def images(self) -> list[str]:
        """Every image, class folders or not (a flat val set, labelled by a separate file)."""
        return byte_order(list(self.index.paths))

    def locate(self, path: str) -> tuple[int, int]:
        return self.index.span(path)

    def notes(self) -> list[str]:
        """The scan's notes (kept with the index), then those of the classes' choice."""
        return self.index.notes + self.class_notes

    def reader(self) -> ArchiveReader:
        return ArchiveReader(self.path, folder=False)


class TarFolderSource(ArchiveSource):
    """A folder of class tars (n01440764.tar, ...: the train tar's members, extracted once)."""

    @staticmethod
    def accepts(path: str) -> bool:
        if not os.path.isdir(path):
            return False
        try:
            with os.scandir(path) as entries:
                found = list(entries)
        except OSError:
            return False
        if any(is_image_name(e.name) and not e.is_dir() for e in found):
            return False  # images of its own: a flat folder (a val set), whatever else lies beside them
        return any(e.is_file() and not PARTIAL.search(e.name) and is_tar(e.path) for e in found)  # see tar_files

    def tar_files(self) -> list[str]:
        names = byte_order([e.name for e in os.scandir(self.path) if e.is_file() and not PARTIAL.search(e.name)])
        tars = [name for name in names if is_tar(os.path.join(self.path, name))]
        self._refuse_class_folders(tars)
        for name in names:
            if TAR_NAME.search(name):  # a compressed class tar; other compressed files are only left out
                refuse_compressed(os.path.join(self.path, name), in_folder=True)
        return [os.path.join(self.path, name) for name in tars]

    def _refuse_class_folders(self, tars: list[str]) -> None:
        """Class tars with class folders beside them (a recipe stopped half-way): etl reads one kind, and
        taking either would drop the other's classes in silence."""
        folders = [d for d in self._sub_folders() if _holds_images(os.path.join(self.path, d))]
        if folders and tars:
            more = f" and {len(tars) - 1:,d} more" if len(tars) > 1 else ""
            also = f" and {len(folders) - 1:,d} more" if len(folders) > 1 else ""
            recipe = ('for f in *.tar; do mkdir -p "${f%.tar}" && tar -xf "$f" -C "${f%.tar}" && rm "$f"; done')
            raise UsageError(f"{self.path} holds both class tars ({tars[0]}{more}) and sub-folders of images "
                             f"({folders[0]}/{also}), and etl reads one kind: extract the tars into class folders "
                             f"as the recipe does (cd {shlex.quote(self.path)} && {recipe}), or move the "
                             "sub-folders out of it")

    def _sub_folders(self) -> list[str]:
        return byte_order([e.name for e in os.scandir(self.path) if e.is_dir()])

    def _walk(self, files: list[str]) -> ArchiveIndex:
        index = ArchiveIndex()
        folders = self._sub_folders()  # none holds images: _refuse_class_folders saw to it
        index.notes.extend(self._not_read(files, folders))
        if folders:
            index.notes.append(f"{plural(len(folders), 'sub-folder')} beside the class tars left out: no images "
                               f"in them that etl can list (e.g. {folders[0]!r})")
        with _scan_progress(sum(os.path.getsize(f) for f in files), self.show) as bar:
            for path in files:
                name = os.path.basename(path)
                TarIndexer(path, index, lambda at, done=bar.n: bar.update(done + at - bar.n),
                           index.new_group(name)).run(prefix=f"{name}/")
        return index

    def _not_read(self, files: list[str], folders: list[str]) -> list[str]:
        """Notes on the folder's entries that are no class tar: partial downloads, links to nothing, others."""
        taken = {os.path.basename(path) for path in files} | set(folders)
        rest = [e for e in os.scandir(self.path) if e.name not in taken]
        partial = byte_order([e.name for e in rest if e.is_file() and PARTIAL.search(e.name)])
        dangling = byte_order([e.path for e in rest if e.is_symlink() and not os.path.exists(e.path)])
        others = byte_order([e.name for e in rest if e.name not in partial and e.path not in dangling])
        notes = [dangling_note(dangling)] if dangling else []
        if partial:
            notes.append(f"{INCOMPLETE}: {partial[0]} is a download not finished{_more(partial)}, left out: "
                         "finish the download, or move it out")
        if others:
            notes.append(f"{plural(len(others), 'file')} that {'is' if len(others) == 1 else 'are'} not a tar left "
                         f"out (e.g. {others[0]!r})")
        unnamed = [os.path.basename(path) for path in files if not path.endswith(".tar")]
        if unnamed:  # read all the same: the content is a class tar, its name less the extension the class
            notes.append(f"{plural(len(unnamed), 'class tar')} not named *.tar read as {plural(len(unnamed), 'class')}"
                         f" (e.g. {unnamed[0]!r}; the recipe's *.tar loop would skip it)")
        return notes

    def reader(self) -> ArchiveReader:
        return ArchiveReader(self.path, folder=True)


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1:,d} more)" if len(names) > 1 else ""
