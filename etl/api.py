"""API: etl.convert and etl.verify for Python callers, with the CLI's option names, defaults and errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from etl.check import Checker
from etl.check import verify as check_dataset
from etl.outlock import shared_around
from etl.pipeline import PipelineError
from etl.pipeline import convert as run_pipeline
from etl.settings import PRESET_OPTIONS, Settings, UsageError, build_settings

PathLike = str | os.PathLike[str]


class NothingConverted(PipelineError):
    """The run finished but wrote no image (the CLI's exit status 1); the report says why for each file."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def convert(train: PathLike, out: PathLike, val: PathLike | float | None = None, *, progress: bool = True,
            **options: Any) -> dict[str, Any]:
    """Convert the class folders under `train` into a dataset in `out`, as `etl convert` does.

    val: a validation folder (--val-dir), or a percentage per class (--val-pct); options: the CLI's
    options by their Settings names (workers=2, resize_mode="crop", ...), with the same defaults.
    Returns the report, the same dict as report.json. Bad options raise UsageError with the CLI's message;
    a run that fails raises PipelineError (NothingConverted when no image could be converted) or Interrupted.
    progress=False shows no bar and prints no summary."""
    return run_convert(_values(train, out, val, options), progress=progress)


def _values(train: PathLike, out: PathLike, val: PathLike | float | None, options: dict[str, Any]) -> dict[str, Any]:
    for key in options:
        if key not in PRESET_OPTIONS:
            raise UsageError(f"unknown option '{key}'")
    values = {key: os.fspath(value) if isinstance(value, os.PathLike) else value for key, value in options.items()}
    if val is not None:
        key = "val_pct" if isinstance(val, (int, float)) and not isinstance(val, bool) else "val_dir"
        if values.get(key) is not None:
            raise UsageError(f"give val or {key}, not both")
        values[key] = os.fspath(val) if isinstance(val, os.PathLike) else val
    return {"train_dir": os.fspath(train), "out_dir": os.fspath(out), **values}


def run_convert(values: dict[str, Any], preset: str | None = None, progress: bool = True,
                start_method: str | None = None) -> dict[str, Any]:
    """Settings from the options given (and a preset), then the conversion; shared with `etl convert`.

    start_method: None, a forkserver (safe from any caller), or "fork" (see etl.procs.mp_context)."""
    settings = build_settings(values, preset)
    return wrote_something(run_pipeline(settings, progress=progress, start_method=start_method), settings)


def wrote_something(report: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The report of a run that wrote at least one record; NothingConverted (exit status 1) otherwise."""
    if not any(split["written"] for split in report["splits"].values()):
        raise NothingConverted(f"no image could be converted; the reasons are in {settings.layout.report}", report)
    return report


def verify(out: PathLike, progress: bool = True) -> Checker:
    """Decode and check every record of a converted dataset, or of one LMDB (etl imageset's), as `etl verify` does.

    Returns the check: its .problems (empty when the dataset is sound) and .records (how many were read)."""
    if not Path(out).is_dir():
        raise UsageError(f"dataset folder not found: {os.fspath(out)}")
    with shared_around(out):  # a split or shard too: the lock of the dataset around it
        return check_dataset(os.fspath(out), progress=progress)
