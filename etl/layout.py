"""Layout: the name of every file and folder of an output dataset, in one place."""

from __future__ import annotations

from pathlib import Path

SPLITS = ("train", "val")
CHECKPOINT_DIR = ".etl"
JOB = "job.json"  # in CHECKPOINT_DIR: the job's identity (etl.checkpoint)
LOCK = "lock"  # in CHECKPOINT_DIR: the output lock (etl.outlock); kept when a dataset is replaced
LABELS = "labels.txt"
REPORT = "report.json"
MEAN_PROTO, MEAN_JPG = "mean.binaryproto", "mean.jpg"
MEAN_FILES = (MEAN_PROTO, MEAN_JPG)


def db_name(split: str) -> str:
    """The LMDB environment folder of a split, as DIGITS names it: train_db, val_db."""
    return f"{split}_db"


def list_name(split: str) -> str:
    """The `<path> <label>` list file of a split: train.txt, val.txt."""
    return f"{split}.txt"


def db_path(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir, db_name(split))


def list_path(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir, list_name(split))


SUMS_SUFFIX = ".sums"


def sums_name(split: str) -> str:
    """The checksum sidecar of a split's database, beside its folder: train_db.sums (see docs/formats.md)."""
    return db_name(split) + SUMS_SUFFIX


def sums_path(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir, sums_name(split))


def skip_log_name(split: str) -> str:
    """The split's skipped/warned files, one JSON line each, in the checkpoint folder."""
    return f"{split}.skipped.jsonl"


DATASET_FILES = (LABELS, *(list_name(s) for s in SPLITS), *(sums_name(s) for s in SPLITS), *MEAN_FILES, REPORT)
DATASET_DIRS = (*(db_name(s) for s in SPLITS), CHECKPOINT_DIR)
