"""CLI: `etl convert`, `etl verify`, `etl merge` and `etl demo`; user errors become one line, never a traceback."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from etl import __version__
from etl.options import cli_order, help_text, kind_of, opt_of
from etl.settings import Settings, UsageError, build_settings, shipped_presets


class _Parser(argparse.ArgumentParser):
    """Errors become a UsageError (one line, exit 2) that names the closest option or command to a mistyped one.

    Unambiguous prefixes of an option (--qual for --quality) are still accepted, as argparse does."""

    commands: dict[str, argparse.ArgumentParser]  # the top-level parser's subcommands (make_parser)
    argv: list[str]

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        self.argv = list(sys.argv[1:] if args is None else args)
        ns, extras = self.parse_known_args(self.argv, namespace)
        if extras:
            sub = getattr(self, "commands", {}).get(getattr(ns, "command", None) or "")
            raise UsageError(_unrecognized(extras, _flags(self) + (_flags(sub) if sub else [])))
        return ns

    def error(self, message: str) -> None:  # type: ignore[override]
        choice = re.search(r"invalid choice: (.+?) \(choose from (.*)\)$", message)
        if choice:
            close = difflib.get_close_matches(choice[1].strip("'"), [c.strip("'") for c in choice[2].split(", ")], 1)
            message += f"; did you mean '{close[0]}'?" if close else ""
        elif message.startswith("the following arguments are required") and getattr(self, "argv", None):
            unknown = [a for a in self.argv if a.startswith("-") and not _known(a, _flags(self))]
            if unknown:  # `etl --verison`: say so, rather than that the command is missing
                message = _unrecognized(unknown, _flags(self))
        raise UsageError(message)


def _flags(p: argparse.ArgumentParser) -> list[str]:
    return [flag for action in p._actions for flag in action.option_strings]


def _known(arg: str, flags: list[str]) -> bool:
    """A flag, or a prefix argparse takes for one."""
    name = arg.split("=", 1)[0]
    return any(flag.startswith(name) for flag in flags)


def _unrecognized(extras: list[str], flags: list[str]) -> str:
    """argparse's message, and the flag closest to the first mistyped option that has a close one."""
    message = "unrecognized arguments: " + " ".join(extras)
    for arg in extras:
        close = difflib.get_close_matches(arg.split("=", 1)[0], flags, 1) if arg.startswith("-") else []
        if close:
            return f"{message}; did you mean {close[0]}?"
    return message


def _convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an image folder into DIGITS/Caffe LMDB databases",
                       description="Defaults follow the DIGITS ImageNet recipe: 224x224 squash, 3 channels, "
                                   "JPEG q90, shuffled with a fixed seed, every core.")
    p.add_argument("--config", help="a TOML preset file, or the name of one shipped with etl ("
                                    f"{', '.join(shipped_presets())}); options given here override it")
    add_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def add_options(p: argparse.ArgumentParser) -> None:
    """One argument per Settings field, as its declaration says (etl.options); every default is None,
    so that an option not given leaves the preset's value or the field's default."""
    boxes: dict[str, Any] = {}
    for f in cli_order(fields(Settings)):
        o = opt_of(f)
        if o.hidden:
            continue
        if o.group not in boxes:
            boxes[o.group] = p.add_argument_group(o.group) if o.group else p
        box = boxes[o.group]
        if o.exclusive:
            key = "exclusive " + o.exclusive
            if key not in boxes:
                boxes[key] = box.add_mutually_exclusive_group()
            box = boxes[key]
        text = help_text(f).replace("%", "%%")
        if o.positional:
            box.add_argument(f.name, help=text)
            continue
        flag = o.flag or "--" + f.name.replace("_", "-")
        if o.const is not None:
            box.add_argument(flag, dest=f.name, action="store_const", const=o.const, help=text)
        else:
            kind = {"int": int, "float": float}.get(kind_of(f)) if o.parse is None else None
            box.add_argument(flag, *o.also, dest=f.name, type=kind, choices=o.choices or None, help=text)
        if o.alias:
            alias, value, alias_help = o.alias
            box.add_argument(alias, dest=f.name, action="store_const", const=value, help=alias_help)


# how long --generate 3000 took, measured on a 2-core VM with other load (bench 393 s, tune 243 s)
BENCH_TIME = {"bench": "about 6 minutes on 2 cores", "tune": "about 4 minutes on 2 cores"}


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="etl", description="Image folders to DIGITS/Caffe-compatible LMDB, on every core.")
    parser.add_argument("--version", action="version", version=f"etl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    parser.commands = sub.choices
    _convert_parser(sub)
    v = sub.add_parser("verify", help="decode and check every record of a converted dataset, or of one LMDB")
    v.add_argument("out_dir", metavar="OUT_DIR", help="the dataset folder (the one holding labels.txt), one split of "
                                                      "it (OUT_DIR/train_db, sharded or not), or one LMDB folder: "
                                                      "etl imageset's DB_NAME, or a database Caffe wrote")
    v.add_argument("--quiet", action="store_true")
    for name, text in (("bench", "measure kernels, stages, the limit, etl against the baselines, the serial "
                                  "ceiling and memory"),
                       ("tune", "sweep worker counts and chunk sizes; recommend a setting and plot the curve")):
        b = sub.add_parser(name, help=text, description=text)
        src = b.add_mutually_exclusive_group()
        src.add_argument("--src", help="real images: a folder of class folders (as etl convert reads it), a flat "
                                       "folder of ImageNet <wnid>_*.JPEG, or an archive (a tar of class tars or "
                                       "class folders, or a folder of class tars)")
        src.add_argument("--generate", type=int,
                         help=f"images of a generated ImageNet-like corpus (--generate 3000: {BENCH_TIME[name]})")
        b.add_argument("--repeat", type=int, default=1, help="copies of the --src files, under new names")
        b.add_argument("--out", default="bench-out", help="where bench.json / tune.json and sweep.png go")
        b.add_argument("--cold", action="store_true",
                       help="empty the page cache of the corpus before each run, as a real conversion finds it (as "
                            "root: drop_caches; otherwise posix_fadvise per file, checked with mincore)" +
                            (": cold and warm figures side by side" if name == "bench" else ""))
        if name == "bench":
            b.add_argument("--workers", type=int, help="worker processes (default: every usable core)")
            b.add_argument("--list-counts", default="10000,200000",
                           help="listed-image counts for the coordinator memory probe")
            b.add_argument("--ceiling-records", type=int, default=40_000,
                           help="~17 KB records pushed through the writer for the serial ceiling")
            b.add_argument("--rounds", type=int, default=3,
                           help="end-to-end runs of each pipeline, interleaved; the median counts (3)")
        else:
            b.add_argument("--max-workers", type=int, help="sweep 1..N workers (default: 2 x cores)")
            b.add_argument("--rounds", type=int, default=1,
                           help="runs of each point, the median counts (1; 3 where runs vary by more than the "
                                "differences sought)")
    m = sub.add_parser("mean", help="the mean image of any Datum LMDB, as Caffe's compute_image_mean, on every core",
                       description="Prints each channel's mean; writes the BlobProto to OUTPUT_FILE when given "
                                   "(and NAME.jpg beside NAME.binaryproto).")
    m.add_argument("db", metavar="DB", help="an LMDB folder of Datum records (etl, Caffe or DIGITS), or a sharded "
                                            "split's folder (OUT/train_db of --shard-size)")
    m.add_argument("output", metavar="OUTPUT_FILE", nargs="?", help="where the mean BlobProto goes")
    m.add_argument("--workers", type=int, help="worker processes (default: every usable core)")
    m.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    g = sub.add_parser("merge", help="join a sharded dataset's shards (convert --shard-size) into one LMDB per split",
                       description="Each sharded split's shards become the one database a one-machine run "
                                   "writes, byte for byte, with its checksums; then `etl verify OUT` checks it.")
    g.add_argument("out_dir", metavar="OUT", help="the dataset folder etl convert wrote (or OUT/train_db: that split)")
    g.add_argument("--keep-shards", action="store_true", help="keep the shards, as <split>_db.shards/")
    g.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    sub.add_parser("imageset", help="Caffe's convert_imageset, same flags: etl imageset [FLAGS] ROOTFOLDER/ LISTFILE "
                                    "DB_NAME (etl imageset --help)", add_help=False)
    d = sub.add_parser("demo", help="build a small ImageNet-like tree, convert it, verify it")
    d.add_argument("--out", help="keep the demo here (default: a temporary folder, removed at the end)")
    d.add_argument("--workers", type=int)
    return parser


def cmd_convert(args: argparse.Namespace) -> int:
    from etl.api import run_convert

    values = {k: v for k, v in vars(args).items() if k not in ("command", "config", "quiet")}
    # fork: this process runs OpenCV only after its last fork (the mean image), so no forked worker inherits
    # the locks of a running OpenCV thread pool.
    # A run that writes nothing raises NothingConverted, a PipelineError: main prints it and exits 1.
    run_convert(values, args.config, progress=not args.quiet, start_method="fork")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from etl.api import verify
    from etl.check import render

    check = verify(args.out_dir, progress=not args.quiet)
    print(render(check))
    return 1 if check.problems else 0


def cmd_imageset(argv: list[str]) -> int:
    from etl.imageset import run_imageset

    # fork, as cmd_convert: this process has run no OpenCV before its workers are forked
    return run_imageset(argv, start_method="fork")


def cmd_mean(args: argparse.Namespace) -> int:
    from etl.dbmean import run_mean

    return run_mean(args.db, args.output, args.workers, progress=not args.quiet)


def cmd_merge(args: argparse.Namespace) -> int:
    from etl.merge import run_merge

    run_merge(args.out_dir, keep_shards=args.keep_shards, progress=not args.quiet)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.out:
        code = _demo(Path(args.out), args.workers)
        print(f"demo: kept in {args.out} (the tree in train/ and val/, the dataset in out/, the archives in ilsvrc/)")
        return code
    with tempfile.TemporaryDirectory(prefix="etl-demo-") as tmp:  # removed at the end, also after an error
        code = _demo(Path(tmp), args.workers)
        print(f"demo: removing {tmp} (give --out DIR to keep the tree and the dataset)")
    return code


def _demo(base: Path, workers: int | None) -> int:
    from etl.check import render, verify
    from etl.pipeline import convert
    from etl.synth import TreeSpec, make_tree

    t0 = time.monotonic()
    print(f"demo: building an ImageNet-like tree in {base} ...")
    make_tree(base / "train", TreeSpec(classes=8, per_class=60, seed=1))
    make_tree(base / "val", TreeSpec(classes=8, per_class=10, seed=2, awkward=False))
    print(f"demo: tree built in {time.monotonic() - t0:.1f} s; converting")
    values = {"train_dir": str(base / "train"), "out_dir": str(base / "out"), "val_dir": str(base / "val"),
              "workers": workers, "overwrite": True}
    convert(build_settings(values))
    check = verify(str(base / "out"))
    print(render(check))
    return 1 if check.problems else _demo_archives(base / "ilsvrc", workers)


def _demo_archives(base: Path, workers: int | None) -> int:
    """The downloads path: the three ILSVRC2012 files as users get them, converted in place, and checked
    against the folders the usual recipe would extract from them."""
    from etl.check import render, verify
    from etl.pipeline import convert
    from etl.reader import LmdbDataset
    from etl.synthilsvrc import IlsvrcSpec, make_ilsvrc

    print(f"\ndemo: the archives path: writing ILSVRC2012-like downloads in {base} ...")
    made = make_ilsvrc(base, IlsvrcSpec(classes=6, per_class=20, val_per_class=5, seed=3, small=False))
    devkit = made.labels["devkit tar.gz"]
    print(f"demo: etl convert {made.train_tar.name} out/ --val {made.val_tar.name} --val-labels {devkit.name}")
    common = {"workers": workers, "overwrite": True}
    convert(build_settings({"train_dir": str(made.train_tar), "out_dir": str(base / "out"),
                            "val_dir": str(made.val_tar), "val_labels": str(devkit), **common}))
    check = verify(str(base / "out"))
    print(render(check))
    convert(build_settings({"train_dir": str(made.train_dir), "out_dir": str(base / "out_extracted"),
                            "val_dir": str(made.val_dir), **common}), progress=False)
    same = all(list(LmdbDataset(base / "out" / db).raw_items()) ==
               list(LmdbDataset(base / "out_extracted" / db).raw_items()) for db in ("train_db", "val_db"))
    print(f"demo: the same records as converting the extracted folders: {'yes' if same else 'NO'}")
    return 1 if check.problems or not same else 0


def _bench_source(args: argparse.Namespace) -> None:
    """The corpus is asked for, never assumed: a default run takes minutes and writes into the current folder."""
    if args.src is None and args.generate is None:
        raise UsageError(f"etl {args.command} needs --src FOLDER (real images: the figures that matter) or "
                         f"--generate N (a generated corpus; --generate 3000 takes {BENCH_TIME[args.command]})")
    if args.src is not None and not Path(args.src).is_dir():
        from etl.bench.corpus import is_archive  # the bench's imports (OpenCV) only for the bench

        if not Path(args.src).is_file():
            raise UsageError(f"--src folder not found: {args.src}")
        if not is_archive(args.src):
            raise UsageError(f"--src {args.src} is a file but not a tar: give a folder of images or a tar of them")
    if (args.generate is not None and args.generate < 1) or args.repeat < 1:
        raise UsageError("--generate and --repeat must be at least 1")


def cmd_bench(args: argparse.Namespace) -> int:
    from etl.bench import render_bench, run_bench
    from etl.settings import usable_cores

    _bench_source(args)
    try:
        counts = tuple(int(c) for c in args.list_counts.split(","))
    except ValueError:
        raise UsageError(f"--list-counts expects two numbers like 10000,200000, got '{args.list_counts}'") from None
    if len(counts) != 2 or not 0 < counts[0] < counts[1]:
        raise UsageError("--list-counts expects two increasing numbers like 10000,200000")
    workers = args.workers or usable_cores()
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.ceiling_records < 64:
        raise UsageError("--ceiling-records must be at least 64")
    if args.rounds < 1:
        raise UsageError("--rounds must be at least 1")
    res = run_bench(args.src, args.generate or 0, args.repeat, workers, Path(args.out), counts,  # type: ignore[arg-type]
                    ceiling_records=args.ceiling_records, cold=args.cold, rounds=args.rounds)
    print(render_bench(res))
    print(f"\nfigures: {Path(args.out) / 'bench.json'}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from etl.bench import render_tune, run_tune
    from etl.settings import usable_cores

    _bench_source(args)
    max_workers = args.max_workers or 2 * usable_cores()
    if max_workers < 1:
        raise UsageError("--max-workers must be at least 1")
    if args.rounds < 1:
        raise UsageError("--rounds must be at least 1")
    res = run_tune(args.src, args.generate or 0, args.repeat, max_workers, Path(args.out), cold=args.cold,
                   rounds=args.rounds)
    print(render_tune(res, Path(args.out)))
    return 0


COMMANDS = {"convert": cmd_convert, "verify": cmd_verify, "demo": cmd_demo, "bench": cmd_bench, "tune": cmd_tune,
            "mean": cmd_mean, "merge": cmd_merge}


def main(argv: list[str] | None = None) -> int:
    from etl.errors import Interrupted, PipelineError

    for stream in (sys.stdout, sys.stderr):  # names that are not UTF-8 print as escapes, never a traceback
        stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    given = sys.argv[1:] if argv is None else argv
    try:
        if given[:1] == ["imageset"]:  # gflags' spellings, which argparse does not parse (-flag, --noflag)
            return cmd_imageset(given[1:])
        args = make_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"etl: error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"etl: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"etl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("etl: interrupted", file=sys.stderr)
        return 130
