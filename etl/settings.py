"""Settings: the run's options, read from defaults, a TOML preset and the command line, then checked."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from etl.aspect import VARIABLE_MODES
from etl.errors import UsageError
from etl.layout import LABELS, SPLITS, Layout
from etl.options import kind_of, opt_of, option, problem

RESIZE_MODES = ("squash", "crop", "fill", "half_crop", *VARIABLE_MODES)
RESIZE_FILTERS = ("antialias", "caffe")  # etl.transform.resize
EXIF_ORIENTATIONS = ("ignore", "apply")
ENCODINGS = ("jpg", "png", "none")
PAGE_CACHE_MODES = ("auto", "drop", "keep")
DEFAULT_SEED = 1385  # fixed so that two runs with default options give the same dataset
RUNNERS = ("local", "ray")
DEFAULT_VAL_PCT = 25.0  # DIGITS' split per class when neither --val nor --val-pct is given


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1




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


LISTS = "list files (TRAIN or --val a file of 'path label' lines)"
DISK_IO = "disk I/O (each cap is shared by all processes; N or train=N,val=M)"


@dataclass(frozen=True)
class Settings:
    """Everything that decides what a conversion writes, and how fast.

    Each field declares its option once (etl.options): the CLI, presets, etl.convert, the checks and
    report.json's settings are all read from these declarations."""

    train_dir: str = option("", "folder with one sub-folder per class, or a tar: of class tars (as "
                                "ILSVRC2012_img_train.tar), of class folders; or a folder of class tars; or a list "
                                "file of 'path label' lines",
                            positional=True, preset=False)
    out_dir: str = option("", "output folder (labels.txt, train_db/, val_db/, mean.binaryproto, ...)",
                          positional=True, preset=False, output=False)
    val_dir: str | None = option(None, "separate validation set: a folder or tar of class folders, or of images "
                                       "that --val-labels names the classes of", exclusive="val", flag="--val",
                                 also=("--val-dir",))
    val_labels: str | None = option(None, "which class each image of a flat --val set is: the devkit tar.gz, "
                                          "LOC_val_solution.csv, valprep.sh, Caffe val.txt, or name-WNID lines",
                                    after="val_pct")
    root: str | None = option(None, "the folder a TRAIN list's paths are under (default: the list's folder)",
                              group=LISTS, after="val_labels")
    val_root: str | None = option(None, "the folder a --val list's paths are under (default: the list's folder)",
                                  group=LISTS, after="root")
    labels: str | None = option(None, "class names, line number = label: synsets.txt, synset_words.txt or "
                                      "DIGITS' labels.txt (default: the label numbers)", group=LISTS,
                                after="val_root")
    strict_list: bool = option(False, "stop before any work at a listed file that is missing (default: skip and "
                                      "report it)", const=True, group=LISTS, output=False,
                                after="labels")
    val_pct: float | None = option(None, f"validation share per class, in % (default {DEFAULT_VAL_PCT:g} without "
                                         "--val)", exclusive="val", low=0, high=100, below=True)
    width: int = option(224, "output width (default {default})", low=1, high=16384)
    height: int = option(224, "output height (default {default})", low=1, high=16384)
    resize_mode: str = option("squash", "how to reach the size (default {default}); shorter and longer keep the "
                                        "aspect ratio: the shorter side becomes --size, or the longer side is capped "
                                        "at --size (records then vary in size, and no mean image is made)",
                              choices=RESIZE_MODES)
    resize_filter: str = option("antialias", "antialias (default: area-averaged, DIGITS' quality) or caffe "
                                "(OpenCV's bilinear on the whole decode, as convert_imageset: Caffe's own, "
                                "aliased, pixels)", choices=RESIZE_FILTERS, since="0.8.0")
    size: int | None = option(None, "the side length of --resize-mode shorter or longer (instead of --width and "
                                    "--height)", low=1, high=16384, since="0.8.0")
    exif_orientation: str = option("ignore", "ignore the EXIF orientation tag, as DIGITS and Caffe do (default), or "
                                   "apply it: a photo tagged as turned is stored upright", choices=EXIF_ORIENTATIONS,
                                   since="0.8.0")
    channels: int = option(3, "3 = RGB (default), 1 = grayscale", choices=(1, 3), rule="1 (grayscale) or 3 (RGB)")
    encoding: str = option("jpg", "jpg (default), png or none (raw CHW BGR)", choices=ENCODINGS)
    quality: int = option(90, "JPEG quality (default {default})", low=1, high=100)
    seed: int = option(DEFAULT_SEED, "seed for the shuffle, the val split and noise padding", low=0)
    shuffle: bool = option(True, "keep class order", flag="--no-shuffle", const=False)
    shard_size: int | None = option(None, "images per shard, rounded up to a multiple of --chunk-size (500 gives "
                                          "512 with the default 64): each split becomes a folder of LMDB shards "
                                          "(OUT/train_db/00000-of-00029/, ...) read in order by DALI; etl merge makes "
                                          "the one LMDB Caffe and DIGITS read", low=1)
    shard_writers: int = option(0, "shards converted at once, each with its own writer and a share of the workers "
                                   "(default 0: one per 16 workers)", low=0, output=False)
    runner: str = option("local", "who converts the shards: this machine (local, default) or a Ray cluster (ray: "
                               "each shard one Ray task; needs --shard-size)", choices=RUNNERS, output=False)
    ray_address: str | None = option(None, "the Ray cluster to run on, as ray.init takes it ('auto': the one "
                                           "`ray start` began here; default: a Ray of this machine's cores, "
                                           "started and stopped by the run)", output=False)
    cpus_per_shard: int | None = option(None, "cores one shard's task takes on its node, and its worker count "
                                              "(default: the cores of the smallest Ray node)", low=1, high=1024,
                                        output=False)
    scratch: str | None = option(None, "node-local folder where each Ray task builds its shard before copying it "
                                       "into OUT (default: the node's temporary folder)", output=False)
    min_per_class: int = option(1, "drop classes with fewer images", low=1)
    max_per_class: int | None = option(None, "use at most this many images of a class")
    relative_paths: bool = option(False, "train.txt/val.txt paths relative to the source folder", const=True)
    max_pixels: int = option(178_956_970, "refuse images whose header claims more pixels", low=1)  # Pillow's limit
    strict: bool = option(False, "skip images libjpeg decodes only with a warning (truncated, corrupt data)",
                          const=True, after="commit_every")
    on_error: str = option("skip", "skip bad files and report them (default) or stop at the first one",
                           choices=("skip", "fail"), rule="skip or fail", output=False, after="strict")
    image_timeout: float = option(120.0, "seconds one image may take before its worker is replaced (default "
                                  "{default})", low=0, above=True, rule="above 0 seconds", output=False,
                                  after="on_error")
    workers: int = option(0, "worker processes (default: every usable core)", low=0, high=1024,
                          rule="from 1 to 1024 (0 = every core)", output=False)
    chunk_size: int = option(64, "images per task sent to a worker (default {default})", low=1, high=4096)
    queue_depth: int = option(2, "tasks each worker holds, the one it works on included (default {default})",
                              low=1, high=64, output=False)
    read_ahead: int = option(8, "images each worker reads ahead of the one it converts, each in its own thread "
                             "(up to 8 at once); 0: none (default {default})", low=0, high=256, output=False,
                             after="queue_depth")
    commit_every: int = option(1000, "records per LMDB transaction (default {default})", low=1, output=False)
    max_buffer_mb: int = option(1024, "MB that converted images in flight to the writer may hold, and again those "
                                "awaiting its commit (default {default})", low=1, output=False)
    overwrite: bool = option(False, "replace a dataset already in OUT_DIR", const=True, output=False)
    resume: bool = option(False, "continue an interrupted run (same arguments) exactly where it stopped",
                          const=True, output=False)
    max_read_mbps: Any = option(None, "cap on MB/s the workers read", parse=parse_cap, group=DISK_IO, output=False)
    max_write_mbps: Any = option(None, "cap on MB/s the writer writes", parse=parse_cap, group=DISK_IO,
                                 output=False)
    max_iops: Any = option(None, "cap on input files opened per second", parse=parse_cap, group=DISK_IO,
                           output=False)
    adaptive_io: bool = option(False, "back off while the input or output disk is busier than --io-target",
                               const=True, group=DISK_IO, output=False)
    io_target: float = option(80.0, "disk utilisation % for --adaptive-io (default {default})", low=1, high=100,
                              rule="a percentage from 1 to 100", group=DISK_IO, output=False)
    # posix_fadvise(DONTNEED) hygiene; etl.pagecache makes the auto choice
    page_cache: str = option("auto", "drop read-once input and the written database from the page cache, keep "
                             "both, or auto (default): keep the input when it fits in half of the free memory, "
                             "drop the database", choices=PAGE_CACHE_MODES, group=DISK_IO, exclusive="page_cache",
                             alias=("--keep-page-cache", "keep", "the same as --page-cache keep"), output=False)
    # etl imageset's (etl.imageset): convert_imageset's output, and its options that etl convert has no use for
    caffe_imageset: bool = option(False, "OUT is one LMDB as convert_imageset writes it: its keys, its Datums",
                                  hidden=True, preset=False)
    keep_size: bool = option(False, "no resize: each image keeps its size", hidden=True, preset=False)
    encode_type: str = option("", "the encoding of --encoded records; empty: each file's own extension",
                              hidden=True, preset=False)
    check_size: bool = option(False, "stop at a record whose size differs from the first's", hidden=True,
                              preset=False, output=False)
    # set on a shard's own run (etl.runners.shards): OUT is the shard's LMDB, keyed by the images' global places
    in_shard: bool = option(False, "this run converts one shard", hidden=True, preset=False, output=False)

    @property
    def worker_count(self) -> int:
        return self.workers or usable_cores()

    @property
    def effective_val_pct(self) -> float:
        """DIGITS' default split (25% per class) when no val folder or percentage is given."""
        if self.val_dir is not None:
            return 0.0
        return DEFAULT_VAL_PCT if self.val_pct is None else self.val_pct

    @property
    def makes_mean(self) -> bool:
        """Whether the train split's images are summed into mean.binaryproto: one size for every record, not
        convert_imageset's database (a mean image fits only records of its own size: Caffe checks each one)."""
        return not self.caffe_imageset and self.resize_mode not in VARIABLE_MODES

    @property
    def layout(self) -> Layout:
        return Layout(self.out_dir, single_db=self.caffe_imageset)

    def output_settings(self) -> dict[str, Any]:
        """The options that decide the bytes written (not how fast they are written), in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if opt_of(f).output}


FIELDS = {f.name: f for f in fields(Settings)}
def default_of(name: str) -> Any:
    """An option's default (None for a name that is not an option)."""
    return FIELDS[name].default if name in FIELDS else None


PRESET_OPTIONS = frozenset(name for name, f in FIELDS.items() if opt_of(f).preset)
CAP_OPTIONS = tuple(name for name, f in FIELDS.items() if opt_of(f).parse is parse_cap)


PRESETS = Path(__file__).parent / "presets"  # shipped with the package (conf/ in the clone links to them)
PRESET_SUFFIX = ".toml"


def shipped_presets() -> list[str]:
    """The names of the presets installed with etl, for --config NAME."""
    return sorted(p.name.removesuffix(PRESET_SUFFIX) for p in PRESETS.glob("*" + PRESET_SUFFIX))


def preset_file(given: str) -> str:
    """--config's file: a path as given when one exists, else a shipped preset named by `given` (with or
    without .toml), from any folder. A bare name that is neither gets the list of shipped presets."""
    if os.path.exists(given) or os.sep in given or (os.altsep and os.altsep in given):
        return given
    shipped = PRESETS / (given if given.endswith(PRESET_SUFFIX) else given + PRESET_SUFFIX)
    if shipped.is_file():
        return str(shipped)
    raise UsageError(f"config file not found: {given}, nor a shipped preset of that name (the shipped presets: "
                     f"{', '.join(shipped_presets())}; or give a TOML file's path)")


def load_preset(given: str) -> dict[str, Any]:
    """Read a TOML preset (a file, or a shipped preset's name); keys are option names with '_' or '-'."""
    path = preset_file(given)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"config file {path} is a folder") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    values = {key.replace("-", "_"): value for key, value in raw.items()}
    if "keep_page_cache" in values:  # the switch's name before page_cache (etl 0.2)
        old = values.pop("keep_page_cache")
        if not isinstance(old, bool):
            raise UsageError(f"config file {path}: option keep_page_cache expects true or false, got {old!r}")
        if "page_cache" in values:
            raise UsageError(f"config file {path}: give page_cache or its old name keep_page_cache, not both")
        values["page_cache"] = "keep" if old else "drop"
    for key in values:
        if key not in PRESET_OPTIONS:
            raise UsageError(f"config file {path}: unknown option '{key}'")
    return values


def build_settings(cli_values: dict[str, Any], preset_path: str | None = None) -> Settings:
    """Defaults, overridden by the preset, overridden by options given on the command line.

    An option given also replaces the preset's value of the options it excludes: --val-dir on the command
    line wins over the preset's val_pct."""
    merged: dict[str, Any] = load_preset(preset_path) if preset_path else {}
    given = {k: v for k, v in cli_values.items() if v is not None}
    for name in given:
        for rival in _rivals(name):
            merged.pop(rival, None)
    merged.update(given)
    settings = Settings(**{k: _coerce(k, v) for k, v in merged.items()})
    check_settings(settings)
    return settings


def _rivals(name: str) -> list[str]:
    """The options declared mutually exclusive with this one (the same `exclusive` key)."""
    key = opt_of(FIELDS[name]).exclusive if name in FIELDS else ""
    return [other for other, f in FIELDS.items() if key and other != name and opt_of(f).exclusive == key]


def _coerce(name: str, value: Any) -> Any:
    f = FIELDS[name]
    kind = kind_of(f)
    parse = opt_of(f).parse
    if parse is not None:
        return parse(name, value)
    if kind == "int" and isinstance(value, bool):
        raise UsageError(f"option {name} expects a number, got {value!r}")
    if kind == "int" and not isinstance(value, int):
        raise UsageError(f"option {name} expects a whole number, got {value!r}")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"option {name} expects a number, got {value!r}")
        return float(value)
    if kind == "bool" and not isinstance(value, bool):
        raise UsageError(f"option {name} expects true or false, got {value!r}")
    if kind == "str" and not isinstance(value, str):
        raise UsageError(f"option {name} expects text, got {value!r}")
    return value


def check_settings(s: Settings) -> None:
    """Refuse impossible settings with a one-line message that says what to fix."""
    _check_folders(s)
    if s.val_dir is not None and s.val_pct is not None:
        raise UsageError("give either --val or --val-pct, not both")
    if s.val_labels is not None and s.val_dir is None:
        raise UsageError("--val-labels names the classes of a flat --val set: give --val too")
    if s.val_labels is not None and not os.path.isfile(s.val_labels):
        raise UsageError(f"val labels file not found: {s.val_labels}")
    for f in fields(s):  # the declared ranges and choices
        message = problem(f, getattr(s, f.name))
        if message:
            raise UsageError(message)
    if s.max_per_class is not None and s.max_per_class < s.min_per_class:
        raise UsageError("--max-per-class must be at least --min-per-class")
    if s.resume and s.overwrite:
        raise UsageError("give either --resume or --overwrite, not both")
    _check_size(s)
    _check_runner(s)


def _check_size(s: Settings) -> None:
    """--size is the side length of the aspect-preserving modes, and theirs only."""
    if s.resize_mode in VARIABLE_MODES and s.size is None:
        does = "makes each image's shorter side" if s.resize_mode == "shorter" else "caps each image's longer side at"
        raise UsageError(f"--resize-mode {s.resize_mode} {does} --size N: give --size too (e.g. --size 256)")
    if s.size is not None and s.resize_mode not in VARIABLE_MODES:
        raise UsageError(f"--size goes with --resize-mode shorter or longer; --resize-mode {s.resize_mode} makes "
                         "--width x --height: give those instead, or one of the two modes")
    if s.resize_mode in VARIABLE_MODES and (s.width, s.height) != (default_of("width"), default_of("height")):
        raise UsageError(f"--width and --height go with the fixed-size modes; --resize-mode {s.resize_mode} sizes "
                         "each image by --size alone: leave them out")


def _check_runner(s: Settings) -> None:
    """The Ray options go with --runner ray, which runs shards; --shard-writers goes with shards too."""
    if s.shard_writers and s.shard_size is None:
        raise UsageError("--shard-writers sets how many shards are converted at once: give --shard-size N too")
    if s.runner == "ray" and s.shard_size is None:
        raise UsageError("--runner ray runs each shard as one Ray task: give --shard-size N too")
    for flag, value in (("--ray-address", s.ray_address), ("--cpus-per-shard", s.cpus_per_shard),
                        ("--scratch", s.scratch)):
        if value is not None and s.runner != "ray":
            raise UsageError(f"{flag} is an option of the Ray runner: give --runner ray too")


def _check_folders(s: Settings) -> None:
    # Imported here, not at the top: the sources' planner reads Settings, so the two modules meet only at run time.
    from etl.sources.registry import find_kind, found_instead

    for role, path in (("train", s.train_dir), ("val", s.val_dir)):
        if role == "train" and not path:
            raise UsageError("train folder not found: (none given)")
        if path is not None and find_kind(path) is None:
            if os.path.exists(path):
                what = found_instead(path)  # it reads the file: once
                found = f" (it {what})" if what else ""
                raise UsageError(f"{role} folder {path} is not a folder, a tar archive nor a list file{found}: give "
                                 "the folder that holds one sub-folder per class, a tar of class tars or class "
                                 "folders, or a file of 'path label' lines")
            raise UsageError(f"{role} folder not found: {path}")
    if not s.out_dir:
        raise UsageError("no output folder given")
    _check_lists(s)
    _check_nesting(s)


def _check_lists(s: Settings) -> None:
    """The list options go with list inputs, and name what exists."""
    from etl.sources.listfile import looks_like_list

    for flag, folder, path, role in (("--root", s.root, s.train_dir, "TRAIN"), ("--val-root", s.val_root, s.val_dir,
                                                                            "--val")):
        if folder is None:
            continue
        if path is None or not looks_like_list(path):
            raise UsageError(f"{flag} is the folder a list file's paths are under, and {role} is not a list file")
        if not os.path.isdir(folder):
            raise UsageError(f"{flag} folder not found: {folder}")
    if s.labels is not None:
        if not looks_like_list(s.train_dir):
            raise UsageError("--labels names the classes of a list file's label numbers, and TRAIN is not a list "
                             "file (a folder's classes are its sub-folders)")
        if not os.path.isfile(s.labels):
            raise UsageError(f"labels file not found: {s.labels}")
    if s.strict_list and not looks_like_list(s.train_dir):
        raise UsageError("--strict-list checks the files of a list, and TRAIN is not a list file")
    if s.val_dir is not None and looks_like_list(s.val_dir) and not looks_like_list(s.train_dir):
        raise UsageError(f"--val {s.val_dir} is a list file, which goes with a list TRAIN (a list's labels are "
                         "numbers, a folder's classes are names): give a val folder, or lists for both")
    _check_lists_kept(s)


def _check_lists_kept(s: Settings) -> None:
    """An input list where the output writes a file of the same name would be replaced by it."""
    out = Path(s.out_dir).resolve()
    written = {s.layout.list(split).resolve() for split in SPLITS} | {s.layout.report.resolve(),
                                                                       (out / LABELS).resolve()}
    for flag, path in (("TRAIN", s.train_dir), ("--val", s.val_dir), ("--labels", s.labels)):
        if path is not None and Path(path).resolve() in written:
            raise UsageError(f"{flag} {path} is where etl writes its own {Path(path).name}: choose another output "
                             "folder, or move the list")


def _check_nesting(s: Settings) -> None:
    """An output inside an input is scanned as a class by the next run; a val folder inside train is read twice."""
    out, train = Path(s.out_dir).resolve(), Path(s.train_dir).resolve()
    for src in (s.train_dir, s.val_dir):
        if src is not None and out == Path(src).resolve():
            raise UsageError(f"output folder {s.out_dir} is an input folder: choose another")
        if src is not None and Path(src).resolve() in out.parents and not out.is_file():  # a file: said later
            raise UsageError(f"output folder {s.out_dir} is inside the input folder {src}: choose one outside it")
    if s.val_dir is not None:
        val = Path(s.val_dir).resolve()
        if val == train or train in val.parents:
            raise UsageError(f"--val {s.val_dir} is {'the' if val == train else 'inside the'} train folder: "
                             "give a separate folder, or --val-pct to hold out part of each class")
