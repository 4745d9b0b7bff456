"""File writing that never leaves a partial file, and content fingerprints. Bottom layer."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import shutil
from pathlib import Path
from typing import NoReturn

from featx.runtime.errors import OutputWriteError

TMP_MARK = ".tmp-"
WRITE_FAILURES = {
    errno.ENOSPC: "the file system is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
"""Why a write can fail that the user, not featx, has to fix."""


def write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the new one, never a part:
    a temporary file beside it, flushed to disk, then renamed over it."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with tmp.open("wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise_write_error(err, path)
    finally:
        # Where even this fails (a file system gone read-only), the next run's
        # remove_stale_temporaries removes it; the write's own error is the one to report.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def make_folder(path: Path) -> None:
    """``mkdir -p path``, a refused write reported as OutputWriteError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise_write_error(err, path)


def raise_write_error(err: OSError, path: Path) -> NoReturn:
    """Re-raises ``err``, met writing ``path``, as OutputWriteError when it is one of
    WRITE_FAILURES (naming the file and the free space of its folder), else as it is."""
    if err.errno not in WRITE_FAILURES:
        raise err
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    reason = f"{WRITE_FAILURES[err.errno]} ({errno.errorcode[err.errno]})"
    space = f"; {_free_space(path.parent)}" if full else ""
    raise OutputWriteError(f"could not write {path}: {reason}{space}.", full=full) from err


def _free_space(folder: Path) -> str:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return f"the free space of {folder} is unknown"
    return f"{folder} has {_size(free)} free"


def _size(count: int) -> str:
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    exponent = min(int(math.log(max(count, 1), 1024)), len(units) - 1)
    return f"{count} bytes" if exponent == 0 else f"{count / 1024**exponent:.1f} {units[exponent]}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
