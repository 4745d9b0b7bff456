"""featx's side of the extraction cases: the C++ decode + preprocess stage and the whole
`featx extract` job, each as one unit of work the harness times.

Each mirrors a baseline in featx.bench.eager, so the two can be set side by side.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from featx.runtime.extract import extract
from featx.runtime.metadata import Preprocess
from featx.runtime.native import native
from featx.runtime.pipeline import spec_dict


def cpp_preprocess_pass(
    paths: Sequence[str | Path], preprocess: Preprocess
) -> Callable[[], list[np.ndarray]]:
    """One pass of the C++ decode + preprocess over ``paths``, one image at a time on the calling
    thread (the counterpart of eager.pil_preprocess_pass); each call returns the tensors."""
    files = [str(path) for path in paths]
    spec = spec_dict(preprocess)
    runner = native()

    def run() -> list[np.ndarray]:
        tensors = []
        for path in files:
            status, message, tensor = runner.preprocess_file(path, spec)
            if status != "ok":
                raise ValueError(f"{path}: {status}: {message}")
            tensors.append(tensor)
        return tensors

    return run


def featx_extract_job(
    onnx_path: str | Path,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    batch_size: int,
    device: str = "cpu",
) -> Callable[[], None]:
    """A whole `featx extract` job (decode to saved shards) into a fresh ``out_dir``, session
    creation included as users pay it (featx.shards.read_features reads the result)."""
    out_dir = Path(out_dir)
    files = [str(path) for path in paths]

    def run() -> None:
        shutil.rmtree(out_dir, ignore_errors=True)
        summary = extract(
            onnx_path, files, out_dir, batch_size=batch_size, device=device, progress=False
        )
        if summary.errors:
            raise ValueError(
                f"{summary.errors} benchmark images failed; see {out_dir}/errors.jsonl"
            )

    return run
