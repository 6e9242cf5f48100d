"""CLI: `etl convert`, `etl verify` and `etl demo`; user errors become one line, never a traceback."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from etl.settings import ENCODINGS, PAGE_CACHE_MODES, RESIZE_MODES, UsageError, build_settings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an image folder into DIGITS/Caffe LMDB databases",
                       description="Defaults follow the DIGITS ImageNet recipe: 224x224 squash, 3 channels, "
                                   "JPEG q90, shuffled with a fixed seed, every core.")
    p.add_argument("train_dir", help="folder with one sub-folder per class")
    p.add_argument("out_dir", help="output folder (labels.txt, train_db/, val_db/, mean.binaryproto, ...)")
    p.add_argument("--config", help="TOML preset (see conf/); options given here override it")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-dir", help="separate validation folder with the same class names")
    val.add_argument("--val-pct", type=float, help="validation share per class, in %% (default 25 without --val-dir)")
    p.add_argument("--width", type=int, help="output width (default 224)")
    p.add_argument("--height", type=int, help="output height (default 224)")
    p.add_argument("--resize-mode", choices=RESIZE_MODES, help="how to reach the size (default squash)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="3 = RGB (default), 1 = grayscale")
    p.add_argument("--encoding", choices=ENCODINGS, help="jpg (default), png or none (raw CHW BGR)")
    p.add_argument("--quality", type=int, help="JPEG quality (default 90)")
    p.add_argument("--seed", type=int, help="seed for the shuffle, the val split and noise padding")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_const", const=False, help="keep class order")
    p.add_argument("--min-per-class", type=int, help="drop classes with fewer images")
    p.add_argument("--max-per-class", type=int, help="use at most this many images of a class")
    p.add_argument("--relative-paths", action="store_const", const=True,
                   help="train.txt/val.txt paths relative to the source folder")
    p.add_argument("--max-pixels", type=int, help="refuse images whose header claims more pixels")
    p.add_argument("--workers", type=int, help="worker processes (default: every usable core)")
    p.add_argument("--chunk-size", type=int, help="images per task sent to a worker (default 64)")
    p.add_argument("--queue-depth", type=int,
                   help="tasks each worker holds, the one it works on included (default 2)")
    p.add_argument("--commit-every", type=int, help="records per LMDB transaction (default 1000)")
    p.add_argument("--strict", action="store_const", const=True,
                   help="skip images libjpeg decodes only with a warning (truncated, corrupt data)")
    p.add_argument("--on-error", choices=("skip", "fail"), help="skip bad files and report them (default) "
                   "or stop at the first one")
    p.add_argument("--image-timeout", type=float, help="seconds one image may take before its worker is "
                   "replaced (default 120)")
    p.add_argument("--overwrite", action="store_const", const=True, help="replace a dataset already in OUT_DIR")
    p.add_argument("--resume", action="store_const", const=True,
                   help="continue an interrupted run (same arguments) exactly where it stopped")
    io = p.add_argument_group("disk I/O (each cap is shared by all processes; N or train=N,val=M)")
    io.add_argument("--max-read-mbps", help="cap on MB/s the workers read")
    io.add_argument("--max-write-mbps", help="cap on MB/s the writer writes")
    io.add_argument("--max-iops", help="cap on input files opened per second")
    io.add_argument("--adaptive-io", action="store_const", const=True,
                    help="back off while the input or output disk is busier than --io-target")
    io.add_argument("--io-target", type=float, help="disk utilisation %% for --adaptive-io (default 80)")
    cache = io.add_mutually_exclusive_group()
    cache.add_argument("--page-cache", choices=PAGE_CACHE_MODES,
                       help="drop read-once input and the written database from the page cache, keep both, or "
                            "auto (default): keep the input when it fits in half of the free memory, drop the "
                            "database")
    cache.add_argument("--keep-page-cache", dest="page_cache", action="store_const", const="keep",
                       help="the same as --page-cache keep")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="etl", description="Image folders to DIGITS/Caffe-compatible LMDB, on every core.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _convert_parser(sub)
    v = sub.add_parser("verify", help="decode and check every record of a converted dataset")
    v.add_argument("out_dir")
    v.add_argument("--quiet", action="store_true")
    for name, text in (("bench", "measure kernels, stages, the limit, etl against the baselines, the serial "
                                  "ceiling and memory"),
                       ("tune", "sweep worker counts and chunk sizes; recommend a setting and plot the curve")):
        b = sub.add_parser(name, help=text, description=text)
        src = b.add_mutually_exclusive_group()
        src.add_argument("--src", help="a folder of real images (class folders, or flat ImageNet <wnid>_*.JPEG)")
        src.add_argument("--generate", type=int, default=3000,
                         help="images of a generated ImageNet-like corpus (default 3000)")
        b.add_argument("--repeat", type=int, default=1, help="copies of the --src files, under new names")
        b.add_argument("--out", default="bench-out", help="where bench.json / tune.json and sweep.png go")
        if name == "bench":
            b.add_argument("--workers", type=int, help="worker processes (default: every usable core)")
            b.add_argument("--list-counts", default="10000,200000",
                           help="listed-image counts for the coordinator memory probe")
            b.add_argument("--ceiling-records", type=int, default=40_000,
                           help="~17 KB records pushed through the writer for the serial ceiling")
        else:
            b.add_argument("--max-workers", type=int, help="sweep 1..N workers (default: 2 x cores)")
    d = sub.add_parser("demo", help="build a small ImageNet-like tree, convert it, verify it")
    d.add_argument("--out", help="keep the demo here (default: a temporary folder)")
    d.add_argument("--workers", type=int)
    return parser


def cmd_convert(args: argparse.Namespace) -> int:
    from etl.pipeline import convert

    values = {k: v for k, v in vars(args).items() if k not in ("command", "config", "quiet")}
    settings = build_settings(values, args.config)
    # fork: this process never runs OpenCV, so a forked worker cannot inherit its thread pool's locks
    report = convert(settings, progress=not args.quiet, start_method="fork")
    if not any(split["written"] for split in report["splits"].values()):
        print(f"etl: error: no image could be converted; the reasons are in {settings.out_dir}/report.json",
              file=sys.stderr)
        return 1
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from etl.verify import render, verify

    if not Path(args.out_dir).is_dir():
        raise UsageError(f"dataset folder not found: {args.out_dir}")
    check = verify(args.out_dir, progress=not args.quiet)
    print(render(check))
    return 1 if check.problems else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from etl.pipeline import convert
    from etl.synth import TreeSpec, make_tree
    from etl.verify import render, verify

    base = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="etl-demo-"))
    t0 = time.monotonic()
    print(f"demo: building an ImageNet-like tree in {base} ...")
    make_tree(base / "train", TreeSpec(classes=8, per_class=60, seed=1))
    make_tree(base / "val", TreeSpec(classes=8, per_class=10, seed=2, awkward=False))
    print(f"demo: tree built in {time.monotonic() - t0:.1f} s; converting")
    values = {"train_dir": str(base / "train"), "out_dir": str(base / "out"), "val_dir": str(base / "val"),
              "workers": args.workers, "overwrite": True}
    convert(build_settings(values))
    check = verify(str(base / "out"))
    print(render(check))
    return 1 if check.problems else 0


def _bench_source(args: argparse.Namespace) -> None:
    if args.src is not None and not Path(args.src).is_dir():
        raise UsageError(f"--src folder not found: {args.src}")
    if args.generate < 1 or args.repeat < 1:
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
    res = run_bench(args.src, args.generate, args.repeat, workers, Path(args.out), counts,  # type: ignore[arg-type]
                    ceiling_records=args.ceiling_records)
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
    res = run_tune(args.src, args.generate, args.repeat, max_workers, Path(args.out))
    print(render_tune(res, Path(args.out)))
    return 0


COMMANDS = {"convert": cmd_convert, "verify": cmd_verify, "demo": cmd_demo, "bench": cmd_bench, "tune": cmd_tune}


def main(argv: list[str] | None = None) -> int:
    from etl.pipeline import Interrupted, PipelineError

    try:
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
