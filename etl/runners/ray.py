"""Ray runner: each shard of a split one Ray task that builds it on node-local disk and copies it into OUT."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import ray
from ray.exceptions import RayError, RayTaskError

from etl.checkpoint import Checkpoint
from etl.errors import Interrupted, PipelineError
from etl.layout import LMDB_FILES, db_path
from etl.pagecache import CacheChoice
from etl.procs import child_etl_digest, etl_digest, mp_context
from etl.progress import ProgressBar
from etl.runners import raywatch
from etl.runners.local import LocalRunner
from etl.runners.shards import Shard, assemble, convert_part, cut, finished, identity, shard_part
from etl.settings import Settings, usable_cores
from etl.sources.base import Split
from etl.stats import SplitStats
from etl.testing import FaultHook

RETRIES = 3  # a shard's task is run again after its worker or node died, or it raised: up to this many times
FAULT_ENV = ("ETL_TEST_FAULTS", "ETL_TEST_FAULT_DIR")  # the test faults a task is given (etl.testing)
TMP = ".tmp"  # OUT/<split>_db/<shard>.tmp: a shard being copied in; renamed into place once complete


def fault_name(split: str, shard: str) -> str:
    """The fault hook's name for a shard's copy into OUT: ETL_TEST_FAULTS="exit_once=<shard:train:00001-of-00003>"
    ends the task's process there, the first time (its copy half done)."""
    return f"<shard:{split}:{shard}>"


class OtherEtl(RuntimeError):
    """A node imports another etl than the driver's."""


@ray.remote(num_cpus=0)
class Tally:
    """The images each running shard has committed, as its task tells at each commit: the driver's bar."""

    def __init__(self) -> None:
        self.images: dict[str, int] = {}

    def set(self, shard: str, images: int) -> None:
        self.images[shard] = images

    def get(self) -> dict[str, int]:
        return dict(self.images)


class CommitWatch(threading.Thread):
    """In a task: reads its shard's last commit (chunks done) every second and tells the tally the images."""

    def __init__(self, where: Path, split: str, shard: Shard, chunk_size: int, tally: Any) -> None:
        super().__init__(daemon=True, name="etl-commit-watch")
        self.state = Checkpoint(where).path(f"{split}.state.json")
        self.shard, self.chunk_size, self.tally = shard, chunk_size, tally
        self.stopped = threading.Event()

    def run(self) -> None:
        told = -1
        while not self.stopped.wait(1.0):
            try:
                images = min(json.loads(self.state.read_text())["chunks"] * self.chunk_size, self.shard.items)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if images != told:
                self.tally.set.remote(self.shard.name, images)
                told = images


@ray.remote
def build_shard(part: Split, shard: Shard, s: Settings, cache: CacheChoice, job: str, target: str,
                faults: dict[str, str], driver_etl: str, tally: Any = None) -> dict[str, Any]:
    """One shard: converted by a local runner in this node's scratch folder (--scratch, or the node's temporary
    folder: LMDB must not be written over a network filesystem), under `job`, then copied into `target` under
    OUT. Returns its done record, with where it ran."""
    t0 = time.monotonic()
    check_etl(driver_etl)
    where = Path(s.scratch or Path(tempfile.gettempdir(), "etl-scratch"), job, part.name, shard.name)
    watch = CommitWatch(where, part.name, shard, s.chunk_size, tally) if tally is not None else None
    if watch is not None:
        watch.start()
    try:
        record = convert_part(LocalRunner(None, s), part, shard, s, where, cache, progress=False)
    finally:
        if watch is not None:
            watch.stopped.set()
    publish(where, Path(target), FaultHook(faults), fault_name(part.name, shard.name))
    shutil.rmtree(where, ignore_errors=True)
    context = ray.get_runtime_context()
    return {**record, "node": {"id": context.get_node_id(), "ip": ray.util.get_node_ip_address(),
                               "seconds": time.monotonic() - t0}}


def check_etl(driver_etl: str) -> None:
    """This node's etl, in the task and in the processes its local runner starts, must be the driver's."""
    node = ray.util.get_node_ip_address()
    for who, digest in (("this task", etl_digest()), ("its worker processes", child_etl_digest(mp_context(None)))):
        if digest != driver_etl:
            raise OtherEtl(f"node {node}: {who} import another etl than the driver's: install the same etl "
                           "(version and sources) on every node")


def publish(built: Path, target: Path, fault: FaultHook | None = None, name: str = "") -> None:
    """Copy a finished shard folder (its database and .etl/, whose done marker comes with it) to `target`: into
    `target`.tmp first, each file synced, then renamed into place, so that `target` is always a whole shard. A
    copy begun by an earlier attempt, and an older `target`, are replaced."""
    tmp = target.with_name(target.name + TMP)
    shutil.rmtree(tmp, ignore_errors=True)
    for src in sorted(built.rglob("*")):
        dst = tmp / src.relative_to(built)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        elif src.name not in LMDB_FILES[1:]:  # lock.mdb: a reader's table, not data
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            _fsync(dst)
            if fault and src.name == LMDB_FILES[0]:
                fault(name)
    tmp.mkdir(parents=True, exist_ok=True)
    for folder in sorted({p.parent for p in tmp.rglob("*")} | {tmp}):
        _fsync(folder)
    if target.exists():
        shutil.rmtree(target)
    os.rename(tmp, target)
    _fsync(target.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RayRunner:
    """Runs each shard of a split as one Ray task (on whichever node Ray gives it), then puts the split back
    together as ShardedRunner does. It uses the Ray this process is connected to, if any; else it connects to
    --ray-address, or starts a Ray of this machine's cores, and stops it at close()."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.owned = False  # this runner started (or connected) the Ray it uses, and ends it at close()
        self.watch: subprocess.Popen | None = None  # ends the Ray this runner started, if this process is killed

    def start(self) -> None:
        if ray.is_initialized():
            return
        # etl says what happened in one line: Ray's own log lines (its start, its warnings) and the tasks' output
        # forwarded to this terminal would come first and bury it; a task's failure comes back as its exception.
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        try:
            if self.s.ray_address:
                ray.init(address=self.s.ray_address, **quiet)
            else:
                before = {child.pid for child in psutil.Process().children()}
                ray.init(address="local", num_cpus=usable_cores(), include_dashboard=False, **quiet)
                self.watch = raywatch.start([c.pid for c in psutil.Process().children() if c.pid not in before])
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, ... with long texts
            where = f"the Ray cluster at {self.s.ray_address}" if self.s.ray_address else "a local Ray"
            raise PipelineError(f"cannot start or reach {where}: {_first_line(exc)}") from None
        self.owned = True

    def close(self) -> None:
        if self.owned and ray.is_initialized():
            ray.shutdown()
        raywatch.stop(self.watch)
        self.owned, self.watch = False, None

    def cpus_per_shard(self) -> int:
        """--cpus-per-shard, or the cores of the smallest node with any: a shard fits on every node."""
        if self.s.cpus_per_shard:
            return self.s.cpus_per_shard
        cores = [int(n["Resources"]["CPU"]) for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU")]
        return max(1, min(cores, default=usable_cores()))

    def run_split(self, split: Split, s: Settings, out: Path, cache: CacheChoice, progress: bool) -> SplitStats:
        self.start()
        t0 = time.monotonic()
        folder = db_path(out, split.name)
        folder.mkdir(exist_ok=True)
        shards = cut(split, s)
        done: dict[str, dict[str, Any]] = {}
        if s.resume:  # before anything is sent: a shard in OUT with this job's done marker is not run again
            for shard in shards:
                record = finished(folder / shard.name, identity(s, shard_part(split, shard)))
                if record is not None:
                    done[shard.name] = record
        cpus = self.cpus_per_shard()
        task_s = replace(s, workers=s.workers or cpus)  # the shard's local runner: as many workers as cores taken
        job = job_id(s, split, out)
        faults = {k: os.environ[k] for k in FAULT_ENV if k in os.environ}
        task = build_shard.options(num_cpus=cpus, max_retries=RETRIES, retry_exceptions=True)
        bar = ProgressBar(total=len(split.items), desc=split.name, unit="img", disable=not progress, smoothing=0.05)
        tally = Tally.remote() if progress and len(done) < len(shards) else None  # type: ignore[attr-defined]
        pending: dict[Any, Shard] = {}
        try:
            for shard in shards:
                if shard.name not in done:
                    ref = task.remote(shard_part(split, shard), shard, task_s, cache, job,
                                      str(folder / shard.name), faults, etl_digest(), tally)
                    pending[ref] = shard
            _show(bar, done, pending, len(shards), None)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    shard = pending.pop(ref)
                    done[shard.name] = _result(ref, split.name, shard)
                _show(bar, done, pending, len(shards), tally)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted: {split.name} has {len(done)} of {len(shards)} shards complete in "
                              f"{folder}; run the same command with --resume to continue", 130) from None
        finally:
            for ref in pending:
                ray.cancel(ref)
            if tally is not None:
                ray.kill(tally)
            bar.close()
        records = [done[shard.name] for shard in shards]
        stats = assemble(split, shards, records, s, out, time.monotonic() - t0)
        for entry, record in zip(stats.shards, records, strict=True):
            if "node" in record:
                entry["node"] = record["node"]["ip"]
        if progress:
            print(node_summary(split.name, records))
        return stats


def _show(bar: ProgressBar, done: dict[str, dict[str, Any]], pending: dict[Any, Shard], shards: int,
          tally: Any) -> None:
    """The split's bar: the images of the finished shards, and those the running ones have committed."""
    images = sum(r["shard"]["items"] for r in done.values())
    if tally is not None and pending:
        running = ray.get(tally.get.remote())
        images += sum(running.get(shard.name, 0) for shard in pending.values())
    bar.set_postfix(shards=f"{len(done)}/{shards}", refresh=False)
    bar.update(images - bar.n)  # down as well as up: a shard run again starts afresh


def _result(ref: Any, split: str, shard: Shard) -> dict[str, Any]:
    """A finished task's done record; a task that failed after its retries ends the run, naming the shard."""
    try:
        return ray.get(ref)
    except RayError as exc:
        raise PipelineError(f"{split} shard {shard.name} failed after {RETRIES} retries: {_cause(exc)}; the "
                            "shards done are kept: run the same command with --resume to continue") from None


def _cause(exc: RayError) -> str:
    """The failure in one line: the task's own exception, or what Ray says happened to its worker or node."""
    if isinstance(exc, RayTaskError) and exc.cause is not None and not isinstance(exc.cause, RayError):
        cause = exc.cause
        text = f"{type(cause).__name__}: {cause}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return _first_line(text) or type(exc).__name__


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def node_summary(split: str, records: list[dict[str, Any]]) -> str:
    """Which node did what: one line per split, 'ip (node id): shards, images, seconds' for each node."""
    nodes: dict[tuple[str, str], tuple[int, int, float]] = {}
    resumed = 0
    for record in records:
        if "node" not in record:
            resumed += 1
            continue
        key = (record["node"]["ip"], record["node"]["id"][:8])
        shards, images, seconds = nodes.get(key, (0, 0, 0.0))
        nodes[key] = (shards + 1, images + record["shard"]["items"], seconds + record["node"]["seconds"])
    parts = [f"{ip} ({nid}): {n:d} shards, {images:,d} images, {seconds:.1f} s"
             for (ip, nid), (n, images, seconds) in sorted(nodes.items())]
    if resumed:
        parts.append(f"{resumed} shards kept from an earlier run")
    return f"{split} shards by node: " + "; ".join(parts)


def job_id(s: Settings, split: Split, out: Path) -> str:
    """The scratch folder's name for this job's split: its identity and its OUT, so that two jobs never share
    one, and a retry finds the folder its shard was begun in."""
    return hashlib.sha256((identity(s, split) + str(out.resolve())).encode()).hexdigest()[:16]
