"""One run per workdir: a `filelock` lock beside a record of who holds it.

The lock is an OS file lock (flock), so the kernel drops it when its process dies; the
holder record (host, PID, start time) is what a second run reports when it is refused,
and a record found without a live lock is the trace of a crashed run, taken over with
a warning. Both files are removed when the run ends, so a finished workdir holds none.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import filelock

from theseus_jax import atomic
from theseus_jax.errors import UserError

log = logging.getLogger("theseus_jax")

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder.json"
LOCK_FILES = (LOCK_FILE, HOLDER_FILE)


class WorkdirBusy(UserError):
    pass


class WorkdirLock:
    """`acquire()` fails at once (`WorkdirBusy`) while another run holds the workdir."""

    def __init__(self, workdir: str | os.PathLike) -> None:
        self.workdir = Path(workdir)
        self._lock = filelock.FileLock(self.workdir / LOCK_FILE, timeout=0)

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.workdir / HOLDER_FILE).read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        if self.held:
            return
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            holder = self._holder() or {}
            raise WorkdirBusy(
                f"{self.workdir} is in use by another run (PID {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')}, started {holder.get('started', '?')}); wait for it to end "
                "or choose another --workdir"
            ) from None
        previous = self._holder()
        if previous:
            log.warning(
                "%s: taking over the lock of PID %s on host %s (started %s), which ended without releasing it",
                self.workdir, previous.get("pid"), previous.get("host"), previous.get("started"),
            )
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": started}
        atomic.write_text(self.workdir / HOLDER_FILE, json.dumps(holder) + "\n")

    def release(self) -> None:
        """Removes both files (while still holding the lock) and releases it."""
        if not self.held:
            return
        for name in (HOLDER_FILE, LOCK_FILE):
            (self.workdir / name).unlink(missing_ok=True)
        self._lock.release()
