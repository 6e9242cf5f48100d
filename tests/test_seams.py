"""The seams hold: a new input kind is one class plus one registration line, and the writer stays free of OpenCV."""

import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from etl.messages import Item
from etl.pagecache import InputSize
from etl.pipeline import convert
from etl.settings import build_settings
from etl.sources import Unreadable, byte_order, registry

from .test_end_to_end import all_records


@dataclass(frozen=True)
class ZipReader:
    """Items are members of a zip file."""

    zip: str

    def read(self, item: Item, charge: Callable[[int], None], drop_cache: bool) -> bytes:
        with zipfile.ZipFile(self.zip) as zf:
            try:
                info = zf.getinfo(item.path)
            except KeyError:
                raise Unreadable("cannot read: not in the archive") from None
            charge(info.file_size)
            return zf.read(info)

    def stamp(self, item: Item) -> int:
        with zipfile.ZipFile(self.zip) as zf:
            try:
                return zf.getinfo(item.path).CRC
            except KeyError:
                return 0

    def where(self, path: str) -> str:
        return f"{self.zip}/{path}"

    def fixable(self) -> bool:
        return False

    def list_prefix(self, relative: bool) -> str:
        return "" if relative else self.zip + "/"

    def input_size(self, sample: list[Item], count: int) -> InputSize:
        return InputSize(0, 0)

    def device(self) -> str | None:
        return None


class ZipSource:
    """A zip holding class folders: `<class>/<image>`."""

    def __init__(self, path: str, progress: bool = False, saved: Path | None = None) -> None:
        self.path = path

    @staticmethod
    def accepts(path: str) -> bool:
        return zipfile.is_zipfile(path)

    def classes(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        with zipfile.ZipFile(self.path) as zf:
            for name in zf.namelist():
                if not name.endswith("/") and "/" in name:
                    found.setdefault(name.split("/", 1)[0], []).append(name)
        return {name: byte_order(found[name]) for name in byte_order(list(found))}

    def images(self) -> list[str]:
        return [path for paths in self.classes().values() for path in paths]

    def locate(self, path: str) -> tuple[int, int]:
        return -1, -1

    def reader(self) -> ZipReader:
        return ZipReader(self.path)

    def notes(self) -> list[str]:
        return []

    def save(self, folder: Path) -> None:
        pass


def test_a_new_source_is_one_class_and_one_registration_line(small_tree, tmp_path, monkeypatch):
    packed = tmp_path / "train.zip"
    with zipfile.ZipFile(packed, "w") as zf:
        for path in sorted((small_tree / "train").rglob("*")):
            if path.is_file():
                zf.write(path, arcname=str(path.relative_to(small_tree / "train")))
    monkeypatch.setattr(registry, "SOURCES", [ZipSource, *registry.SOURCES])  # the registration line
    common = {"val_pct": 20.0, "workers": 2, "relative_paths": True}
    from_zip = convert(build_settings({"train_dir": str(packed), "out_dir": str(tmp_path / "a"), **common}),
                       progress=False)
    from_dir = convert(build_settings({"train_dir": str(small_tree / "train"), "out_dir": str(tmp_path / "b"),
                                       **common}), progress=False)
    assert from_zip["splits"]["train"]["written"] == from_dir["splits"]["train"]["written"] > 0
    for name in ("train_db", "val_db"):
        assert all_records(tmp_path / "a" / name) == all_records(tmp_path / "b" / name)
    for name in ("labels.txt", "train.txt", "mean.binaryproto"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_writer_process_never_imports_opencv():
    code = "import sys, etl.writer; print('cv2' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
