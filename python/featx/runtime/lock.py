"""One writer per output folder: ``featx extract`` holds an exclusive lock on OUTDIR/.featx.lock
for its whole run, so a second run on the same folder stops at once instead of computing the
same shards again.

The lock is flock(2) on the open file: the kernel drops it when the process ends in any way
(SIGKILL included), so a killed run never blocks the next one. The file stays in the folder
(removing it would let two runs lock two different files of the same name); it holds the
current holder's pid, host and start time, for the error the next run prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from featx.runtime.errors import FeatxError
from featx.runtime.files import raise_write_error

LOCK_FILE = ".featx.lock"


class OutputInUse(FeatxError):
    """Another process holds the output folder's lock."""


class OutputLock:
    """``with OutputLock(out_dir):`` holds ``out_dir``'s lock or raises OutputInUse."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise_write_error(err, self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputInUse(
                f"{self.path.parent} is being written by another featx extract ({holder}; lock "
                f"{self.path}). Wait for it to finish or stop it (a stopped or killed run "
                "releases the folder by itself), or write to another folder with -o."
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError as err:
            os.close(fd)
            raise_write_error(err, self.path)
        self._fd = fd
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a run that is starting up"
