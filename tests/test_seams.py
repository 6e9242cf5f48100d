"""The seams hold: a new input kind is one class plus one registration line, and the writer stays free of OpenCV."""

import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

from etl.pagecache import InputSize
from etl.pipeline import convert
from etl.settings import build_settings
from etl.sources import Unreadable, byte_order, registry

from .test_end_to_end import all_records


@dataclass(frozen=True)
class TarReader:
    """Items are members of an uncompressed tar."""

    tar: str

    def read(self, path: str, charge: Callable[[int], None], drop_cache: bool) -> bytes:
        with tarfile.open(self.tar) as tf:
            try:
                member = tf.getmember(path)
            except KeyError:
                raise Unreadable("cannot read: not in the archive") from None
            charge(member.size)
            return tf.extractfile(member).read()

    def stamp(self, path: str) -> int:
        with tarfile.open(self.tar) as tf:
            try:
                member = tf.getmember(path)
            except KeyError:
                return 0
            return member.offset_data << 64 | member.size

    def where(self, path: str) -> str:
        return f"{self.tar}/{path}"

    def list_prefix(self, relative: bool) -> str:
        return "" if relative else self.tar + "/"

    def input_size(self, sample: list[str], count: int) -> InputSize:
        return InputSize(0, 0)

    def device(self) -> str | None:
        return None


class TarSource:
    """A tar holding class folders: `<class>/<image>`."""

    def __init__(self, path: str) -> None:
        self.path = path

    @staticmethod
    def accepts(path: str) -> bool:
        return path.endswith(".tar") and tarfile.is_tarfile(path)

    def classes(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        with tarfile.open(self.path) as tf:
            for m in tf.getmembers():
                if m.isfile() and "/" in m.name:
                    found.setdefault(m.name.split("/", 1)[0], []).append(m.name)
        return {name: byte_order(found[name]) for name in byte_order(list(found))}

    def reader(self) -> TarReader:
        return TarReader(self.path)

    def notes(self) -> list[str]:
        return []


def test_a_new_source_is_one_class_and_one_registration_line(small_tree, tmp_path, monkeypatch):
    tar = tmp_path / "train.tar"
    with tarfile.open(tar, "w") as tf:
        for path in sorted((small_tree / "train").rglob("*")):
            if path.is_file():
                tf.add(path, arcname=str(path.relative_to(small_tree / "train")))
    monkeypatch.setattr(registry, "SOURCES", [TarSource, *registry.SOURCES])  # the registration line
    common = {"val_pct": 20.0, "workers": 2, "relative_paths": True}
    from_tar = convert(build_settings({"train_dir": str(tar), "out_dir": str(tmp_path / "a"), **common}),
                       progress=False)
    from_dir = convert(build_settings({"train_dir": str(small_tree / "train"), "out_dir": str(tmp_path / "b"),
                                       **common}), progress=False)
    assert from_tar["splits"]["train"]["written"] == from_dir["splits"]["train"]["written"] > 0
    for name in ("train_db", "val_db"):
        assert all_records(tmp_path / "a" / name) == all_records(tmp_path / "b" / name)
    for name in ("labels.txt", "train.txt", "mean.binaryproto"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_writer_process_never_imports_opencv():
    code = "import sys, etl.writer; print('cv2' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
