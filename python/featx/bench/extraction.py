"""featx's side of the extraction benchmark: the C++ preprocess stage, the runner, the whole job.

Each function mirrors a baseline in featx.bench.eager, measured the same way (wall-clock,
warm-up excluded), so the two can be set side by side.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featx.extract import extract
from featx.metadata import Preprocess
from featx.preprocess import spec_dict
from featx.runner import Runner
from featx.runtime import native

RUNNER_WARMUP_RUNS = 2


def cpp_preprocess_rate(
    paths: Sequence[str | Path], preprocess: Preprocess, limit: int | None = None
) -> float:
    """Images/s of the C++ decode + preprocess of one image at a time on one thread (the
    counterpart of eager.pil_preprocess_rate); the first image is an untimed warm-up."""
    selected = [str(p) for p in list(paths)[:limit]]
    spec = spec_dict(preprocess)
    runner = native()
    runner.preprocess_file(selected[0], spec)
    start = time.perf_counter()
    for path in selected:
        status, message, _ = runner.preprocess_file(path, spec)
        if status != "ok":
            raise ValueError(f"{path}: {status}: {message}")
    return len(selected) / (time.perf_counter() - start)


def runner_rate(onnx_path: str | Path, batch: int, repeats: int, threads: int = 0) -> float:
    """Images/s of model-only inference through featx.Runner (the counterpart of
    eager.python_ort_rate): median of ``repeats`` timed runs on a random batch after warm-up."""
    runner = Runner(onnx_path, threads=threads)
    images = np.random.default_rng(0).standard_normal(
        (batch, *runner.metadata.preprocess.input_shape), dtype=np.float32
    )
    images = images.astype(runner.input_dtype)
    for _ in range(RUNNER_WARMUP_RUNS):
        runner.run(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.run(images)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def featx_extract_rate(
    onnx_path: str | Path,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    batch_size: int = 32,
    workers: int | None = None,
    threads: int = 0,
) -> float:
    """Images/s of a whole `featx extract` job (decode to saved shards) into a fresh ``out_dir``.
    The model's session creation is included, as users pay it."""
    shutil.rmtree(out_dir, ignore_errors=True)
    summary = extract(
        onnx_path,
        [str(p) for p in paths],
        out_dir,
        batch_size=batch_size,
        workers=workers,
        threads=threads,
        progress=False,
    )
    if summary.errors:
        raise ValueError(f"{summary.errors} benchmark images failed; see {out_dir}/errors.jsonl")
    return summary.images_per_second
