"""Pipeline: one conversion from start to end: check the output, plan, checkpoint, run each split, report."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from etl.checkpoint import Checkpoint, plan_digest
from etl.errors import Interrupted, PipelineError, describe_write_error
from etl.layout import CHECKPOINT_DIR, JOB, LABELS, LOCK
from etl.meanimage import mean_image, write_mean
from etl.meansum import mean_layout
from etl.outlock import exclusive
from etl.pagecache import CacheChoice, InputSize, choose_page_cache, free_memory_bytes
from etl.runners import Runner, close_runner, make_runner
from etl.runners.shards import shard_images
from etl.settings import Settings, UsageError, usable_cores
from etl.sinks import MeanSink
from etl.sources import Plan, plan
from etl.stats import SplitStats, colour_notes, summary_text, write_report

__all__ = ["Interrupted", "PipelineError", "convert"]


def check_output(s: Settings) -> None:
    """Refuse an unusable output folder before any work; never silently replace a dataset."""
    out = Path(s.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a folder")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {parent}: choose an output folder you can write to")
    existing = [n for n in s.layout.entries() if (out / n).exists() and not _only_the_lock(out / n)]
    if s.resume:
        if not (out / CHECKPOINT_DIR / JOB).is_file():
            raise _nothing_to_resume(out, existing)
        return
    if existing and not s.overwrite:
        raise UsageError(f"{out} already holds a dataset ({existing[0]}): pass --resume to continue it "
                         "or --overwrite to replace it")


def _nothing_to_resume(out: Path, existing: list[str]) -> UsageError:
    """--resume where no run got as far as its checkpoint: advice that works for what the folder holds."""
    if not existing:  # never started, or stopped before its first word (a full disk at job.json)
        return UsageError(f"nothing to resume in {out}: no checkpoint from an earlier run (it stopped before "
                          "writing one, or never ran); run the same command without --resume")
    return UsageError(f"nothing to resume in {out}: it holds {existing[0]} but no checkpoint "
                      f"({CHECKPOINT_DIR}/{JOB}) to continue from; convert again with --overwrite in place of --resume")


def _only_the_lock(path: Path) -> bool:
    """The checkpoint folder of a run that stopped before its first word: only the output lock is in it, and
    perhaps the temporary file of a job record an older etl could not finish (a full disk)."""
    return path.name == CHECKPOINT_DIR and path.is_dir() and all(
        p.name == LOCK or p.name == f"{JOB}.tmp" for p in path.iterdir())


def create_output(s: Settings) -> Path:
    out = Path(s.out_dir)
    try:
        (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)  # where the output lock lives
    except OSError as exc:
        raise UsageError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    return out


def clear_output(s: Settings, out: Path) -> None:
    """Clear an old dataset (only reached with --overwrite, or where there is none); the lock stays."""
    if s.resume:
        return
    for name in s.layout.entries():
        path = out / name
        if name == CHECKPOINT_DIR:
            for inner in path.iterdir():
                if inner.name != LOCK:
                    shutil.rmtree(inner) if inner.is_dir() else inner.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def printable(text: str) -> str:
    """Names that are not UTF-8 shown with \\xNN-style escapes instead of failing the terminal's encoder."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run as Ctrl-C does (work committed, resumable). Python lets only the main thread
    set a handler: called from another thread (a scheduler's worker), the caller's own handling stands."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def writing(out: Path, what: str, fresh: bool = False) -> Iterator[None]:
    """A failed write (a full disk, above all) ends the run with one line whose advice works: --resume once
    the job record exists, the same command again before (fresh). etl.errors.describe_write_error words it."""
    try:
        yield
    except OSError as exc:
        raise PipelineError(describe_write_error(exc, str(out), what, fresh)) from None


def start_job(s: Settings, job: Plan, out: Path) -> str | None:
    """The checkpoint's job record (or the check that a resume matches it), and labels.txt; returns the sha256
    of the labels.txt it wrote (report.json keeps it, for etl verify to find a line changed since), or None."""
    checkpoint = Checkpoint(out)
    digests = {sp.name: plan_digest(sp.items) for sp in job.splits}
    if s.resume:
        checkpoint.check_resume(s.output_settings(), digests)
    else:
        with writing(out, f"the checkpoint ({CHECKPOINT_DIR}/{JOB})", fresh=True):
            checkpoint.start_job(s.output_settings(), digests)
    with writing(out, "the archive index"):
        for source in job.sources:
            source.save(checkpoint.dir)
    if not s.layout.side_files:
        return None
    text = "".join(f"{name}\n" for name in job.labels).encode("utf-8", "surrogateescape")
    with writing(out, LABELS):
        (out / LABELS).write_bytes(text)
    return hashlib.sha256(text).hexdigest()


def convert(s: Settings, progress: bool = True, start_method: str | None = None) -> dict[str, Any]:
    """Build every database of the dataset; returns the report (also written to report.json).

    start_method: None (a forkserver, safe from any caller) or "fork" (see etl.procs.mp_context)."""
    check_output(s)
    runner = make_runner(s, start_method)
    if progress:
        for note in start_notes(s):
            print(f"etl: note: {note}", file=sys.stderr)
    try:
        job = plan(s, progress)
        out = create_output(s)
        with exclusive(out):
            check_output(s)  # again, now that no other run can change the folder
            clear_output(s, out)
            return run_job(s, job, out, runner, progress)
    except (PipelineError, Interrupted, UsageError) as exc:
        raise _advice_fits(exc, s) from None
    finally:
        close_runner(runner)


def start_notes(s: Settings) -> list[str]:
    """What the run does other than the options say, said once before any work."""
    notes = []
    cores = usable_cores()
    if s.runner == "local" and s.workers > cores:
        notes.append(f"--workers {s.workers} is more than the {cores} usable cores: the workers share the cores, "
                     "and more workers than cores slows the run (leave --workers out for one per core)")
    if s.shard_size is not None and shard_images(s) != s.shard_size:
        notes.append(f"shards of {shard_images(s):,d} images (--shard-size {s.shard_size:,d} rounded up to a "
                     f"multiple of --chunk-size {s.chunk_size})")
    return notes


Stop = PipelineError | Interrupted | UsageError


def _advice_fits(exc: Stop, s: Settings) -> Stop:
    """Advice must work when followed literally: --resume and --overwrite do not go together, so the one
    advised replaces the one given."""
    if s.overwrite:
        exc.args = (re.sub(r"with --resume(?! in place)", "with --resume in place of --overwrite", str(exc)),)
    if s.resume:
        exc.args = (re.sub(r"with --overwrite(?! in place)", "with --overwrite in place of --resume", str(exc)),)
    return exc


def run_job(s: Settings, job: Plan, out: Path, runner: Runner, progress: bool) -> dict[str, Any]:
    """Every split, the mean files, the report and the summary, into an output folder this run holds."""
    labels_sha256 = start_job(s, job, out)
    cache = page_cache_choice(s, job)
    done: list[SplitStats] = []
    with sigterm_as_interrupt():
        for split in job.splits:
            with writing(out, f"the {split.name} split's files"):  # a shard's marker, manifest, list, sum
                done.append(runner.run_split(split, s, out, cache, progress))
        if s.layout.side_files:
            write_mean_files(s, out, done)
    if not any(sp.name == "val" for sp in job.splits) and s.layout.side_files:
        with writing(out, s.layout.list("val").name):
            s.layout.list("val").write_text("")
    # --check_size decides no byte, so it is not among the output settings; etl verify needs to know it was asked
    shown = {**s.output_settings(), **({"check_size": s.check_size} if s.caffe_imageset else {})}
    notes = [*job.notes, *colour_notes(done, s.channels), *mean_notes(s)]
    with writing(out, s.layout.report.name):
        report = write_report(s.layout.report, shown, job.labels, done, notes, resumed=s.resume,
                              labels_sha256=labels_sha256)
    if progress:
        command = "etl imageset" if s.caffe_imageset else "etl convert"
        print(printable(summary_text(str(out), job.labels, done, notes, s.layout.report, command)))
    return report


def mean_notes(s: Settings) -> list[str]:
    """Why a dataset has no mean image, where the recipe would have one."""
    if s.makes_mean or not s.layout.side_files:
        return []
    return [f"no mean image (mean.binaryproto, mean.jpg): --resize-mode {s.resize_mode} makes records of different "
            "sizes, and a mean image fits only records of its own size (Caffe checks each Datum against it); "
            "subtract a mean per channel instead (Caffe's mean_value)"]


def write_mean_files(s: Settings, out: Path, done: list[SplitStats]) -> None:
    """mean.binaryproto and mean.jpg from the complete train split's pixel sum, as its last commit saved it.

    After every split, not between them: making the mean runs OpenCV here, and `etl convert` forks its
    workers from this process, which must not have OpenCV's thread pool running when it forks."""
    for stats in done:
        layout, summary = mean_layout(s.width, s.height, s.channels, stats.name), stats.writer
        if not s.makes_mean or layout is None or summary is None or not summary.sum_chunks:
            continue
        try:
            sums = MeanSink(layout, Checkpoint(out), stats.name)
            sums.resume(summary.sum_chunks, required=True)
            assert sums.total is not None, "the last commit saved the sum"
            write_mean(out, mean_image(layout, sums.total, summary.written))
        except OSError as exc:
            raise PipelineError(describe_write_error(exc, str(out), "the mean files")) from None
        except KeyboardInterrupt:
            raise Interrupted("interrupted: every image is written and committed, the mean files are not; run the "
                              "same command with --resume to write them", 130) from None


def page_cache_choice(s: Settings, job: Plan) -> CacheChoice:
    """One choice for the whole job: its splits' data share the memory."""
    if s.page_cache != "auto":
        return choose_page_cache(s.page_cache, InputSize(0, 0), 0)
    sizes = [sp.input_size() for sp in job.splits]
    total = InputSize(sum(z.total for z in sizes), sum(z.cached for z in sizes))
    return choose_page_cache("auto", total, free_memory_bytes())
