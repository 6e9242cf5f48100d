"""Ray watch: a small process that ends the Ray etl started when the driver is gone, however it went (SIGKILL too).

Ray's own reaper stops its GCS and raylet when the driver dies, but the agents the raylet started (the dashboard
and runtime-env agents) outlive it; this process follows every process under Ray's roots and kills those left."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from contextlib import suppress

import psutil

POLL_SECONDS = 0.25  # a process Ray starts between two looks and that outlives its parent is missed
Known = dict[int, float]  # pid: its start time (a pid used again by another process is not that process)


def start(roots: list[int]) -> subprocess.Popen | None:
    """Watch the processes under `roots` (the ones ray.init started) until stop() or this process ends."""
    if not roots:
        return None
    # run as a file, not as etl's module: it needs psutil alone, and starts in a moment
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *map(str, roots)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(watch: subprocess.Popen | None) -> None:
    """After ray.shutdown(): the watch kills what is left of Ray, then ends."""
    if watch is None:
        return
    assert watch.stdin is not None
    watch.stdin.close()
    with suppress(subprocess.TimeoutExpired):
        watch.wait(10)


def _under(roots: list[int], known: Known) -> None:
    """Add every live process at or under the roots to `known`."""
    for pid in roots:
        with suppress(psutil.Error):
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with suppress(psutil.Error):
                    known[proc.pid] = proc.create_time()


def _kill(known: Known) -> None:
    for pid, started in known.items():
        with suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == started:
                proc.kill()  # the agents ignore SIGTERM


def main(roots: list[int]) -> None:
    """Until the driver's pipe closes (stop(), or the driver's death), note Ray's processes; then kill them."""
    known: Known = {}
    while True:
        _under(roots, known)
        readable, _, _ = select.select([sys.stdin], [], [], POLL_SECONDS)
        if readable and not os.read(sys.stdin.fileno(), 1):
            break
    _under(roots, known)
    _kill(known)


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]])
