"""NVIDIA DALI's fn.readers.caffe (on the CPU) reads what etl writes: fixed-size and aspect-kept records, one
database or a sharded split, and etl imageset's Caffe-style records; its pixels and labels are the records'."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from etl.datum import decode_datum
from etl.synth import TreeSpec, make_tree

from .conftest import run_cli
from .test_end_to_end import all_records

pytest.importorskip("nvidia.dali", reason="DALI is the 'dali' extra (make setup installs it where its wheel installs)")

READ = r"""
import sys
import numpy as np
from nvidia.dali import fn, pipeline_def, types

paths, count, out = sys.argv[1:-2], int(sys.argv[-2]), sys.argv[-1]

@pipeline_def(batch_size=1, num_threads=1, device_id=None)
def read():
    data, labels = fn.readers.caffe(path=paths, random_shuffle=False, name="reader")
    return fn.decoders.image(data, device="cpu", output_type=types.RGB), labels

pipe = read()
pipe.build()
images, labels = [], []
for _ in range(count):
    image, label = pipe.run()
    images.append(np.array(image.at(0)))
    labels.append(int(np.array(label.at(0)).ravel()[0]))
np.savez(out, *images, labels=np.array(labels))
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dali")
    make_tree(root / "train", TreeSpec(classes=3, per_class=6, seed=11, awkward=False))
    return root


def dali_read(paths: list[Path], count: int, tmp_path: Path) -> tuple[list[np.ndarray], list[int]]:
    out = tmp_path / "dali.npz"
    proc = subprocess.run([sys.executable, "-c", READ, *map(str, paths), str(count), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out) as saved:
        return [saved[f"arr_{i}"] for i in range(count)], list(saved["labels"])


def expected(dbs: list[Path]) -> tuple[list[np.ndarray], list[int]]:
    """Each record's image as Pillow decodes its bytes (checked against the Datum's own size where it has one)."""
    images, labels = [], []
    for db in dbs:
        for _, value in all_records(db):
            datum = decode_datum(value)
            image = np.asarray(Image.open(io.BytesIO(datum.data)).convert("RGB"))
            if datum.height:
                assert image.shape[:2] == (datum.height, datum.width)
            images.append(image)
            labels.append(datum.label)
    return images, labels


def assert_same(got: tuple[list[np.ndarray], list[int]], want: tuple[list[np.ndarray], list[int]]) -> None:
    assert got[1] == want[1]
    for dali, pillow in zip(got[0], want[0], strict=True):
        assert dali.shape == pillow.shape
        # both are libjpeg-turbo; its IDCT may differ by a level where DALI picks another one
        assert np.abs(dali.astype(int) - pillow.astype(int)).max() <= 2


@pytest.mark.parametrize("args", [["--width", "40", "--height", "32"], ["--resize-mode", "shorter", "--size", "36"],
                                  ["--resize-mode", "longer", "--size", "48"]], ids=["squash", "shorter", "longer"])
def test_dali_reads_a_dataset_as_its_records_hold_it(tree, tmp_path, args):
    out = tmp_path / "out"
    assert run_cli("convert", str(tree / "train"), str(out), "--workers", "1", "--val-pct", "0", *args).returncode == 0
    want = expected([out / "train_db"])
    assert_same(dali_read([out / "train_db"], len(want[1]), tmp_path), want)
    if "--size" in args:  # records of varying size: DALI gives each its own
        assert len({image.shape for image in want[0]}) > 1


def test_dali_reads_a_sharded_split_in_the_order_of_its_shards(tree, tmp_path):
    out = tmp_path / "out"
    assert run_cli("convert", str(tree / "train"), str(out), "--workers", "1", "--val-pct", "0", "--width", "32",
                   "--height", "32", "--shard-size", "4", "--chunk-size", "4").returncode == 0
    shards = sorted((out / "train_db").glob("?????-of-?????"))  # the glob docs/scaling.md gives
    assert len(shards) > 1
    want = expected(shards)
    assert_same(dali_read(shards, len(want[1]), tmp_path), want)


def test_dali_reads_etl_imagesets_caffe_style_records(tree, tmp_path):
    root = tree / "train"
    lines = [f"{p.relative_to(root)} {i % 3}" for i, p in enumerate(sorted(root.rglob("*.JPEG")))]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    db = tmp_path / "imageset_db"
    proc = run_cli("imageset", "--encoded", "--resize_width=30", "--resize_height=30", f"{root}/",
                   str(tmp_path / "list.txt"), str(db))
    assert proc.returncode == 0, proc.stderr
    want = expected([db])
    assert_same(dali_read([db], len(want[1]), tmp_path), want)
