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
# a split's shards kept by `etl merge --keep-shards`, or left by a merge that was stopped, are the dataset's too
SHARDS_LEFT = (".shards", ".shards.deleting", ".merging")
DATASET_DIRS = (*(db_name(s) for s in SPLITS), *(db_name(s) + tail for s in SPLITS for tail in SHARDS_LEFT),
                CHECKPOINT_DIR)


LMDB_FILES = ("data.mdb", "lock.mdb")


class Layout:
    """Where one run's outputs go. A DIGITS dataset folder (etl convert); or, for `etl imageset`, the folder
    is itself the one LMDB environment, as Caffe's convert_imageset writes it, and etl's own files (list,
    checksums, report) go into its checkpoint folder, where Caffe and DIGITS never look."""

    def __init__(self, out_dir: str | Path, single_db: bool = False) -> None:
        self.out, self.single_db = Path(out_dir), single_db

    def db(self, split: str) -> Path:
        return self.out if self.single_db else db_path(self.out, split)

    def _own(self, name: str) -> Path:
        return self.out / CHECKPOINT_DIR / name if self.single_db else self.out / name

    def list(self, split: str) -> Path:
        return self._own(list_name(split))

    def sums(self, split: str) -> Path:
        return self._own(sums_name(split))

    @property
    def report(self) -> Path:
        return self._own(REPORT)

    @property
    def side_files(self) -> bool:
        """Whether labels.txt, the mean files and an empty val.txt are written (DIGITS reads them)."""
        return not self.single_db

    def entries(self) -> tuple[str, ...]:
        """The names in the output folder that make up a dataset (refused unless --overwrite, then cleared)."""
        return (*LMDB_FILES, CHECKPOINT_DIR) if self.single_db else DATASET_FILES + DATASET_DIRS
