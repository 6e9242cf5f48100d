"""Settings: the run's options, read from defaults, a TOML preset and the command line, then checked."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

RESIZE_MODES = ("squash", "crop", "fill", "half_crop")
ENCODINGS = ("jpg", "png", "none")
PAGE_CACHE_MODES = ("auto", "drop", "keep")
DEFAULT_SEED = 1385  # fixed so that two runs with default options give the same dataset


class UsageError(Exception):
    """A bad argument or input folder: reported as one line, before any work starts."""


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """Everything that decides what a conversion writes, and how fast."""

    train_dir: str = ""
    out_dir: str = ""
    val_dir: str | None = None
    val_pct: float | None = None
    width: int = 224
    height: int = 224
    resize_mode: str = "squash"
    channels: int = 3
    encoding: str = "jpg"
    quality: int = 90
    seed: int = DEFAULT_SEED
    shuffle: bool = True
    min_per_class: int = 1
    max_per_class: int | None = None
    relative_paths: bool = False
    max_pixels: int = 178_956_970  # Pillow's own decompression-bomb limit
    strict: bool = False  # refuse images libjpeg decodes only with a warning
    on_error: str = "skip"  # or "fail": stop at the first bad file
    image_timeout: float = 120.0  # seconds one image may take before its worker is replaced
    workers: int = 0  # 0 = every usable core
    chunk_size: int = 64
    queue_depth: int = 2  # tasks each worker holds: the one it works on and the ones waiting
    commit_every: int = 1000
    overwrite: bool = False
    resume: bool = False
    max_read_mbps: Any = None  # MB/s, or per split: "train=10,val=5" / a TOML table
    max_write_mbps: Any = None
    max_iops: Any = None  # files opened per second
    adaptive_io: bool = False  # back off while the input/output disk is busier than io_target
    io_target: float = 80.0  # percent utilisation
    page_cache: str = "auto"  # posix_fadvise(DONTNEED) hygiene: "drop", "keep", or "auto" (see etl.pagecache)

    @property
    def worker_count(self) -> int:
        return self.workers or usable_cores()

    @property
    def effective_val_pct(self) -> float:
        """DIGITS' default split (25% per class) when no val folder or percentage is given."""
        if self.val_dir is not None:
            return 0.0
        return 25.0 if self.val_pct is None else self.val_pct

    def output_settings(self) -> dict[str, Any]:
        """The options that decide the bytes written (not how fast they are written)."""
        skip = {"workers", "queue_depth", "commit_every", "overwrite", "out_dir", "on_error", "image_timeout", "resume",
                "max_read_mbps", "max_write_mbps", "max_iops", "adaptive_io", "io_target", "page_cache"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


_FIELD_TYPES = {f.name: f.type for f in fields(Settings)}


def load_preset(path: str) -> dict[str, Any]:
    """Read a TOML preset; keys are option names with '_' or '-'."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    values = {key.replace("-", "_"): value for key, value in raw.items()}
    if "keep_page_cache" in values:  # the switch's name before page_cache (etl 0.2)
        old = values.pop("keep_page_cache")
        if not isinstance(old, bool):
            raise UsageError(f"config file {path}: option keep_page_cache expects true or false, got {old!r}")
        if "page_cache" in values:
            raise UsageError(f"config file {path}: give page_cache or its old name keep_page_cache, not both")
        values["page_cache"] = "keep" if old else "drop"
    for key in values:
        if key not in _FIELD_TYPES or key in ("train_dir", "out_dir"):
            raise UsageError(f"config file {path}: unknown option '{key}'")
    return values


def build_settings(cli_values: dict[str, Any], preset_path: str | None = None) -> Settings:
    """Defaults, overridden by the preset, overridden by options given on the command line."""
    merged: dict[str, Any] = {}
    if preset_path:
        merged.update(load_preset(preset_path))
    merged.update({k: v for k, v in cli_values.items() if v is not None})
    settings = Settings(**{k: _coerce(k, v) for k, v in merged.items()})
    check_settings(settings)
    return settings


def _coerce(name: str, value: Any) -> Any:
    kind = str(_FIELD_TYPES[name])
    if name in CAP_OPTIONS:
        return parse_cap(name, value)
    if kind.startswith("int") and isinstance(value, bool):
        raise UsageError(f"option {name} expects a number, got {value!r}")
    if kind.startswith("int") and not isinstance(value, int):
        raise UsageError(f"option {name} expects a whole number, got {value!r}")
    if kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"option {name} expects a number, got {value!r}")
        return float(value)
    if kind == "bool" and not isinstance(value, bool):
        raise UsageError(f"option {name} expects true or false, got {value!r}")
    if kind.startswith("str") and not isinstance(value, str):
        raise UsageError(f"option {name} expects text, got {value!r}")
    return value


CAP_OPTIONS = ("max_read_mbps", "max_write_mbps", "max_iops")
SPLITS = ("train", "val")


def parse_cap(name: str, value: Any) -> dict[str, float]:
    """A cap for every split ('10'), or per split ('train=10,val=5' or a TOML table)."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, str) and "=" in value:
        try:
            value = {k.strip(): float(v) for k, v in (part.split("=", 1) for part in value.split(","))}
        except ValueError:
            raise UsageError(f"{flag} expects a number or train=N,val=M, got '{value}'") from None
    if isinstance(value, dict):
        unknown = [k for k in value if k not in SPLITS]
        if unknown:
            raise UsageError(f"{flag}: unknown split '{unknown[0]}' (use train and val)")
        caps = {k: _positive(flag, v) for k, v in value.items()}
    else:
        caps = dict.fromkeys(SPLITS, _positive(flag, value))
    return caps


def _positive(flag: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} expects a number or train=N,val=M, got {value!r}") from None
    if isinstance(value, bool) or not number > 0:
        raise UsageError(f"{flag} must be above 0, got {value!r}")
    return number


def check_settings(s: Settings) -> None:
    """Refuse impossible settings with a one-line message that says what to fix."""
    _check_folders(s)
    if s.val_dir is not None and s.val_pct is not None:
        raise UsageError("give either --val-dir or --val-pct, not both")
    if s.val_pct is not None and not 0 <= s.val_pct < 100:
        raise UsageError(f"--val-pct must be from 0 to below 100, got {s.val_pct:g}")
    for name in ("width", "height"):
        if not 1 <= getattr(s, name) <= 16384:
            raise UsageError(f"--{name} must be from 1 to 16384, got {getattr(s, name)}")
    if s.resize_mode not in RESIZE_MODES:
        raise UsageError(f"--resize-mode must be one of {', '.join(RESIZE_MODES)}, got '{s.resize_mode}'")
    if s.channels not in (1, 3):
        raise UsageError(f"--channels must be 1 (grayscale) or 3 (RGB), got {s.channels}")
    if s.encoding not in ENCODINGS:
        raise UsageError(f"--encoding must be one of {', '.join(ENCODINGS)}, got '{s.encoding}'")
    if not 1 <= s.quality <= 100:
        raise UsageError(f"--quality must be from 1 to 100, got {s.quality}")
    _check_counts(s)


def _check_folders(s: Settings) -> None:
    if not s.train_dir or not Path(s.train_dir).is_dir():
        raise UsageError(f"train folder not found: {s.train_dir or '(none given)'}")
    if s.val_dir is not None and not Path(s.val_dir).is_dir():
        raise UsageError(f"val folder not found: {s.val_dir}")
    if not s.out_dir:
        raise UsageError("no output folder given")
    out = Path(s.out_dir).resolve()
    for src in (s.train_dir, s.val_dir):
        if src is not None and out == Path(src).resolve():
            raise UsageError(f"output folder {s.out_dir} is an input folder: choose another")


def _check_counts(s: Settings) -> None:
    if s.workers < 0 or s.workers > 1024:
        raise UsageError(f"--workers must be from 1 to 1024 (0 = every core), got {s.workers}")
    if s.min_per_class < 1:
        raise UsageError(f"--min-per-class must be at least 1, got {s.min_per_class}")
    if s.max_per_class is not None and s.max_per_class < s.min_per_class:
        raise UsageError("--max-per-class must be at least --min-per-class")
    if not 1 <= s.chunk_size <= 4096:
        raise UsageError(f"--chunk-size must be from 1 to 4096, got {s.chunk_size}")
    if not 1 <= s.queue_depth <= 64:
        raise UsageError(f"--queue-depth must be from 1 to 64, got {s.queue_depth}")
    if s.commit_every < 1:
        raise UsageError(f"--commit-every must be at least 1, got {s.commit_every}")
    if s.on_error not in ("skip", "fail"):
        raise UsageError(f"--on-error must be skip or fail, got '{s.on_error}'")
    if not s.image_timeout > 0:
        raise UsageError(f"--image-timeout must be above 0 seconds, got {s.image_timeout:g}")
    if s.page_cache not in PAGE_CACHE_MODES:
        raise UsageError(f"--page-cache must be one of {', '.join(PAGE_CACHE_MODES)}, got '{s.page_cache}'")
    if not 1 <= s.io_target <= 100:
        raise UsageError(f"--io-target must be a percentage from 1 to 100, got {s.io_target:g}")
    if s.resume and s.overwrite:
        raise UsageError("give either --resume or --overwrite, not both")
    if s.max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1, got {s.max_pixels}")
