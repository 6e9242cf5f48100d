"""`etl imageset`: Caffe's convert_imageset command line (gflags spellings) run on the etl engine."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from etl.errors import UsageError
from etl.settings import DEFAULT_SEED, Settings, build_settings

USAGE = ("etl imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME: convert a 'path label' list of images under "
         "ROOTFOLDER into the LMDB DB_NAME, as Caffe's convert_imageset does, on every core")


class Flag(NamedTuple):
    kind: type  # bool, int or str
    default: Any
    help: str


CAFFE_FLAGS: dict[str, Flag] = {
    "gray": Flag(bool, False, "treat images as grayscale ones"),
    "shuffle": Flag(bool, False, "shuffle the order of images and their labels (seeded: --seed)"),
    "backend": Flag(str, "lmdb", "the backend for storing the result (only lmdb)"),
    "resize_width": Flag(int, 0, "width images are resized to (with --resize_height; 0: no resize)"),
    "resize_height": Flag(int, 0, "height images are resized to (with --resize_width; 0: no resize)"),
    "check_size": Flag(bool, False, "stop at an image whose size differs from the first one's"),
    "encoded": Flag(bool, False, "store the encoded image (the file itself where no change is asked) in the datum"),
    "encode_type": Flag(str, "", "the encoding of --encoded images ('png', 'jpg', ...; empty: the file's own)"),
}
ETL_FLAGS: dict[str, Flag] = {
    "resize_filter": Flag(str, "caffe", "caffe: OpenCV's bilinear resize, Caffe's own pixels; antialias: etl "
                                        "convert's area-averaged resize (less aliasing when shrinking)"),
    "quality": Flag(int, 95, "JPEG quality of images --encoded as jpg (95, as OpenCV's default)"),
    "seed": Flag(int, DEFAULT_SEED, "the seed of --shuffle: the same seed gives the same order"),
    "workers": Flag(int, 0, "worker processes (0: every usable core)"),
    "resume": Flag(bool, False, "continue an interrupted run exactly where it stopped"),
    "overwrite": Flag(bool, False, "replace DB_NAME when it holds a database"),
    "on_error": Flag(str, "skip", "skip bad images and report them (skip), or stop at the first one (fail)"),
    "strict": Flag(bool, False, "skip images libjpeg decodes only with a warning"),
    "max_read_mbps": Flag(str, "", "cap on MB/s the workers read"),
    "max_write_mbps": Flag(str, "", "cap on MB/s the writer writes"),
    "max_iops": Flag(str, "", "cap on input files opened per second"),
    "max_buffer_mb": Flag(int, 1024, "MB that converted images in flight and awaiting a commit may hold"),
    "quiet": Flag(bool, False, "no progress bar or summary"),
}
FLAGS = {**CAFFE_FLAGS, **ETL_FLAGS}
CHUNK = 50  # images per worker task: 20 make the 1,000 records of each of convert_imageset's commits
# a name with '-' is matched too, so that etl convert's spelling (--resize-filter) is refused, never taken as DB_NAME
FLAG = re.compile(r"^--?([A-Za-z_][A-Za-z0-9_-]*)(?:=(.*))?$", re.S)


def _unknown(name: str) -> UsageError:
    if name.replace("-", "_") in FLAGS:
        return UsageError(f"etl imageset: unknown flag --{name}: its flags are spelt as Caffe's, with '_': "
                          f"--{name.replace('-', '_')}")
    close = difflib.get_close_matches(name, list(FLAGS), 1)
    hint = f"; did you mean --{close[0]}?" if close else ""
    return UsageError(f"etl imageset: unknown flag --{name}{hint}")


def _value(name: str, text: str) -> Any:
    kind = FLAGS[name].kind
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "t", "f", "yes", "no", "y", "n"):
            raise UsageError(f"etl imageset: --{name} takes true or false, got '{text}'")
        return text.lower() in ("true", "1", "t", "yes", "y")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"etl imageset: --{name} takes a whole number, got '{text}'") from None
    return text


def parse_gflags(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Flags as gflags reads them (-flag, --flag, --flag=value, --flag value, --noflag; anywhere among the
    arguments; '--' ends them), and the positional arguments."""
    flags = {name: flag.default for name, flag in FLAGS.items()}
    positional: list[str] = []
    args = iter(argv)
    for arg in args:
        match = FLAG.match(arg)
        if arg == "--":
            positional.extend(args)
            break
        if match is None:
            positional.append(arg)
            continue
        name, text = match[1], match[2]
        if name not in FLAGS and name.startswith("no") and FLAGS.get(name[2:], Flag(str, "", "")).kind is bool \
                and text is None:
            flags[name[2:]] = False
            continue
        if name not in FLAGS:
            raise _unknown(name)
        if text is None and FLAGS[name].kind is not bool:
            text = next(args, None)
            if text is None:
                raise UsageError(f"etl imageset: --{name} needs a value")
        flags[name] = True if text is None else _value(name, text)
    return flags, positional


def usage_text() -> str:
    lines = [USAGE, "", "convert_imageset's flags:"]
    lines += [f"  --{name}  {flag.help} (default: {flag.default!r})" for name, flag in CAFFE_FLAGS.items()]
    lines += ["", "etl's:"]
    lines += [f"  --{name}  {flag.help} (default: {flag.default!r})" for name, flag in ETL_FLAGS.items()]
    return "\n".join(lines)


def imageset_settings(flags: dict[str, Any], positional: list[str]) -> Settings:
    """The etl settings that make convert_imageset's database."""
    if len(positional) != 3:
        raise UsageError(f"etl imageset takes ROOTFOLDER/ LISTFILE DB_NAME, got {len(positional)} argument"
                         f"{'' if len(positional) == 1 else 's'} (etl imageset --help for the flags)")
    if flags["backend"] != "lmdb":
        raise UsageError(f"etl imageset writes LMDB only: --backend {flags['backend']} is not supported "
                         "(Caffe's data layer reads LMDB as well: give --backend lmdb)")
    width, height = flags["resize_width"], flags["resize_height"]
    if width < 0 or height < 0:
        raise UsageError("--resize_width and --resize_height must be 0 (no resize) or more")
    if (width > 0) != (height > 0):
        raise UsageError("give both --resize_width and --resize_height, or neither (Caffe resizes only when both "
                         "are given, and ignores one alone)")
    if flags["check_size"] and (flags["encoded"] or flags["encode_type"]):
        raise UsageError("--check_size compares raw images' sizes, and --encoded records hold no size (Caffe's "
                         "check fails on them): leave out one of the two")
    root, listfile, db = positional
    root = root or "."  # Caffe joins ROOTFOLDER and the path as text: an empty one reads from here
    _check_inputs(root, listfile)
    _check_db(root, db)
    keep = width == 0
    encoded = flags["encoded"] or bool(flags["encode_type"])  # convert_imageset: "assuming encoded=true"
    encoding = ("png" if flags["encode_type"].lower() == "png" else "jpg") if encoded else "none"
    caps = {k: flags[k] for k in ("max_read_mbps", "max_write_mbps", "max_iops") if flags[k]}
    values = {"train_dir": listfile, "root": root, "out_dir": db, "caffe_imageset": True, "val_pct": 0.0,
              "chunk_size": CHUNK,
              "keep_size": keep, "width": width if not keep else 256, "height": height if not keep else 256,
              "channels": 1 if flags["gray"] else 3, "encoding": encoding, "encode_type": flags["encode_type"],
              "check_size": flags["check_size"], "shuffle": flags["shuffle"], "resize_filter": flags["resize_filter"],
              **{k: flags[k] for k in ("quality", "seed", "workers", "resume", "overwrite", "on_error", "strict",
                                       "max_buffer_mb")},
              **caps}
    try:
        return build_settings(values)
    except UsageError as exc:
        raise UsageError(in_flags(str(exc))) from None


# etl convert's names in a message, as etl imageset's flags spell them
FLAG_NAMES = {"--width": "--resize_width", "--height": "--resize_height", "--on-error": "--on_error",
              "--max-read-mbps": "--max_read_mbps", "--max-write-mbps": "--max_write_mbps", "--max-iops": "--max_iops",
              "--max-buffer-mb": "--max_buffer_mb", "--resize-filter": "--resize_filter",
              "resize_filter was": "--resize_filter was", "--root": "ROOTFOLDER", "width was": "--resize_width was",
              "height was": "--resize_height was", "keep_size was": "the resize (--resize_width) was",
              "channels was 3, now 1": "--gray was off, now on", "channels was 1, now 3": "--gray was on, now off",
              "encoding was": "--encoded was",
              "encode_type was": "--encode_type was", "shuffle was": "--shuffle was", "seed was": "--seed was",
              "quality was": "--quality was", "train_dir was": "LISTFILE was", "root was": "ROOTFOLDER was"}


def in_flags(message: str) -> str:
    for name, flag in FLAG_NAMES.items():
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flag, message)
    return message


def _check_inputs(root: str, listfile: str) -> None:
    from etl.sources.listfile import looks_like_list

    if not os.path.isdir(root):
        raise UsageError(f"ROOTFOLDER not found: {root} (the folder the list's paths are under)")
    if not os.path.isfile(listfile):
        raise UsageError(f"LISTFILE not found: {listfile}")
    if not looks_like_list(listfile):
        raise UsageError(f"LISTFILE {listfile} does not start with a 'path label' line")


def _check_db(root: str, db: str) -> None:
    """DB_NAME is a folder etl fills with data.mdb, lock.mdb and .etl/ (and clears with --overwrite): never the
    image folder itself (a folder inside it is fine, as Caffe's examples do)."""
    if Path(db).resolve() == Path(root).resolve():
        raise UsageError(f"DB_NAME {db} is ROOTFOLDER {root}: the LMDB would be written among the images; give the "
                         "LMDB a folder of its own (a new name)")


HELP = ("-h", "-help", "--help", "-helpfull", "--helpfull")


def run_imageset(argv: list[str], start_method: str | None = None) -> int:
    """Exit codes as `etl convert`'s: 0 when records were written, 1 when none could be (NothingConverted) or the
    run failed, 2 for a usage error, 130 when interrupted."""
    from etl.api import wrote_something
    from etl.pipeline import convert

    if any(arg in HELP for arg in argv):
        print(usage_text())
        return 0
    flags, positional = parse_gflags(argv)
    settings = imageset_settings(flags, positional)
    try:
        wrote_something(convert(settings, progress=not flags["quiet"], start_method=start_method), settings)
    except UsageError as exc:  # a resume's refusal names the settings: say them as flags
        raise UsageError(in_flags(str(exc))) from None
    return 0
