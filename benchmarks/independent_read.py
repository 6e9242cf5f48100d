"""Read a converted dataset the way a Caffe-side consumer would, sharing no code with etl.

    python benchmarks/independent_read.py OUT_DIR

Compiles tests/caffe.proto with protoc (grpcio-tools), walks every LMDB key with py-lmdb, parses
each value with the protobuf runtime, decodes it with Pillow, and checks key, label (against
train.txt/val.txt and labels.txt), size and the mean file. Exit 0 when every record passes.
"""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import lmdb
from PIL import Image

PROTO = Path(__file__).resolve().parent.parent / "tests" / "caffe.proto"


def load_caffe_pb2(tmp: str):  # noqa: ANN201 - a generated module
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={tmp}",
                    str(PROTO)], check=True)
    sys.path.insert(0, tmp)
    return importlib.import_module("caffe_pb2")


def check_split(pb2, out: Path, split: str, labels: list[str]) -> tuple[int, list[str]]:  # noqa: ANN001
    problems: list[str] = []
    lines = (out / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    env = lmdb.open(str(out / f"{split}_db"), readonly=True, lock=False)
    count = 0
    with env.begin() as txn:
        for i, (key, value) in enumerate(txn.cursor()):
            datum = pb2.Datum()
            datum.ParseFromString(bytes(value))
            path, label = lines[i].rsplit(" ", 1)
            img = Image.open(io.BytesIO(datum.data))
            img.load()
            if bytes(key) != b"%08d_%d" % (i, datum.label) or datum.label != int(label):
                problems.append(f"{split} record {i}: key {bytes(key)!r} / label {datum.label} vs list {label}")
            if Path(path).parent.name != labels[datum.label] and labels[datum.label] not in Path(path).parts:
                problems.append(f"{split} record {i}: {path} is not in class folder {labels[datum.label]}")
            if img.size != (datum.width, datum.height) or not datum.encoded:
                problems.append(f"{split} record {i}: image {img.size} vs Datum {datum.width}x{datum.height}")
            count += 1
    env.close()
    if count != len(lines):
        problems.append(f"{split}: {count} records, {len(lines)} list lines")
    return count, problems


def main() -> int:
    out = Path(sys.argv[1])
    labels = (out / "labels.txt").read_text(encoding="utf-8").splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        pb2 = load_caffe_pb2(tmp)
        problems: list[str] = []
        for split in ("train", "val"):
            if (out / f"{split}_db").is_dir():
                n, found = check_split(pb2, out, split, labels)
                problems += found
                print(f"{split}: {n} records read by protobuf + Pillow")
        blob = pb2.BlobProto()
        blob.ParseFromString((out / "mean.binaryproto").read_bytes())
        if len(blob.data) != blob.num * blob.channels * blob.height * blob.width:
            problems.append("mean.binaryproto: data size does not match its shape")
        print(f"mean.binaryproto: {blob.num}x{blob.channels}x{blob.height}x{blob.width}")
    for p in problems[:20]:
        print("PROBLEM", p)
    print("independent read:", "OK" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
