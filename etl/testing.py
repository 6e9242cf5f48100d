"""Testing: fault injection for the test suite and the fault drill (inert unless ETL_TEST_FAULTS is set)."""

from __future__ import annotations

import os
import signal
import time

STARTUP_FAULT = "<startup>"  # ETL_TEST_FAULTS="exit=<startup>": the fault hook's name for worker start-up


class FaultHook:
    """Test-only fault injection: ETL_TEST_FAULTS="crash=a.jpg,hang=b.jpg,exit=c.jpg,crash_once=d.jpg".

    crash sends the worker SIGSEGV, exit calls os._exit(3), hang sleeps for an hour, vanish deletes
    the file just before it is read; the name <startup> fires as a worker starts; *_once
    variants fire only the first time (a marker file in ETL_TEST_FAULT_DIR remembers).
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.rules = dict(rule.split("=", 1)[::-1] for rule in env.get("ETL_TEST_FAULTS", "").split(",") if "=" in rule)
        self.marker_dir = env.get("ETL_TEST_FAULT_DIR", "")

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __call__(self, path: str) -> None:
        """The faults of a worker's own thread, as it takes the image up (vanish waits for the read)."""
        action = self._fired(path)
        if action == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif action == "exit":
            os._exit(3)
        elif action == "hang":
            time.sleep(3600)

    def at_read(self, path: str) -> None:
        """The faults of the read itself, wherever it runs (read ahead in a thread, or in place)."""
        if self._fired(path, reading=True) == "vanish":
            os.unlink(path)

    def _fired(self, path: str, reading: bool = False) -> str | None:
        action = self.rules.get(os.path.basename(path))
        if action is None or (action.removesuffix("_once") == "vanish") != reading:
            return None
        if action.endswith("_once"):
            marker = os.path.join(self.marker_dir, os.path.basename(path) + ".fired")
            if os.path.exists(marker):
                return None
            open(marker, "w").close()
            action = action[: -len("_once")]
        return action
