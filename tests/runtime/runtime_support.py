"""Helpers of the runtime tests (numpy, PIL and the standard library only)."""

import contextlib
import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

PYTORCH_SIDE = ("torch", "torchvision", "triton", "onnx", "onnxscript", "sklearn", "matplotlib")
"""Modules no runtime command may import."""


def cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def read_npy_output(out):
    """manifest, ids and features of an npy output folder, read with numpy only."""
    manifest = json.loads((out / "manifest.json").read_text())
    ids, chunks = [], []
    for shard in manifest["shards"]:
        ids += json.loads((out / shard["files"]["ids"]).read_text())
        chunks.append(np.load(out / shard["files"]["features"]))
    return manifest, ids, np.concatenate(chunks)


def featx_command(*args):
    """The installed `featx` console script with ``args``."""
    return [str(Path(sys.executable).parent / "featx"), *map(str, args)]


def run_featx_without(blocked, *args):
    """`featx ARGS` in a fresh interpreter in which importing any of ``blocked`` fails as it does
    where the package is not installed; prints, last, which PyTorch-side modules got imported."""
    script = (
        "import json, sys\n"
        f"sys.modules.update(dict.fromkeys({list(blocked)!r}))\n"
        "from featx.cli import main\n"
        "try:\n"
        f"    code = main({[str(a) for a in args]!r})\n"
        "finally:\n"
        f"    print(json.dumps([m for m in {list(PYTORCH_SIDE)!r} if sys.modules.get(m)]))\n"
        "sys.exit(code)\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


@contextlib.contextmanager
def held_input(path, contents, timeout=120):
    """A named pipe at ``path`` among a job's inputs: the job's read of it blocks until the
    returned ``release()`` writes ``contents`` into it, so the job cannot finish before then.
    Each release serves one read; the pipe is removed on exit."""
    os.mkfifo(path)

    def release():
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as err:  # ENXIO: no reader has opened the pipe yet
                if err.errno != errno.ENXIO or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(contents)

    def release_in_background():
        thread = threading.Thread(target=release, daemon=True)
        thread.start()
        return thread

    try:
        yield release_in_background
    finally:
        Path(path).unlink(missing_ok=True)
