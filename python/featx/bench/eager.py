"""The baseline featx is measured against: what users write today, timed honestly.

Eager extraction is the common hand-written loop: a torch DataLoader whose worker processes decode
with PIL and apply the torchvision transform, the model in eval mode under inference_mode, the
features gathered and saved with ``np.save``. Alongside it, the two ceilings that bound it: PIL
preprocessing on one core, and model-only inference through the onnxruntime Python API.

Timings are wall-clock (``time.perf_counter``) with warm-up excluded.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from featx.metadata import Preprocess, read_metadata
from featx.ort_config import cpu_session
from featx.preprocess import open_rgb, reference_transform

ORT_WARMUP_RUNS = 2


@dataclass(frozen=True)
class EagerResult:
    """One timed eager extraction: ``images`` featurised in ``seconds`` of wall-clock time."""

    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


class ImageFiles(Dataset):
    """Image files -> preprocessed tensors, decoded with PIL in the DataLoader's workers."""

    def __init__(
        self, paths: Sequence[str | Path], transform: Callable[[Image.Image], torch.Tensor]
    ):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(open_rgb(self.paths[index]))


def eager_extract(
    model: nn.Module,
    paths: Sequence[str | Path],
    preprocess: Preprocess,
    out_file: str | Path,
    batch_size: int = 32,
    workers: int = 2,
    threads: int | None = None,
) -> EagerResult:
    """Extracts features of ``paths`` with ``model`` (images -> (B, D)) into ``out_file``.

    ``workers`` DataLoader processes decode and preprocess (0: the main process does);
    ``threads`` sets torch's intra-op threads for the model (None: torch's default).
    The model is warmed up on one batch of zeros first; the timed span runs from starting the
    DataLoader (its worker start-up included, as users pay it) to the saved file.
    """
    model = model.eval()
    loader = DataLoader(
        ImageFiles(paths, reference_transform(preprocess)),
        batch_size=batch_size,
        num_workers=workers,
    )
    with _torch_threads(threads), torch.inference_mode():
        model(torch.zeros(batch_size, *preprocess.input_shape))
        start = time.perf_counter()
        features = torch.cat([model(batch) for batch in loader]).numpy()
        np.save(out_file, features)
        seconds = time.perf_counter() - start
    return EagerResult(images=len(features), seconds=seconds)


def pil_preprocess_rate(
    paths: Sequence[str | Path], preprocess: Preprocess, limit: int | None = None
) -> float:
    """Images/s of PIL decode + reference transform in one process on one core.

    The first image is a warm-up, processed untimed before the timed pass over ``paths[:limit]``.
    """
    selected = list(paths)[:limit]
    transform = reference_transform(preprocess)
    with _torch_threads(1):
        transform(open_rgb(selected[0]))
        start = time.perf_counter()
        for path in selected:
            transform(open_rgb(path))
        seconds = time.perf_counter() - start
    return len(selected) / seconds


def python_ort_rate(onnx_path: str | Path, batch: int, repeats: int) -> float:
    """Images/s of model-only inference of a featx export through the onnxruntime Python API.

    The session has the runner's settings (``featx.ort_config.cpu_session``); the input is a
    random batch of ``batch`` images; the rate is taken from the median of ``repeats`` timed runs
    after warm-up.
    """
    metadata = read_metadata(onnx_path)
    session = cpu_session(onnx_path, metadata.dtype)
    input_name = session.get_inputs()[0].name
    images = np.random.default_rng(0).standard_normal(
        (batch, *metadata.preprocess.input_shape), dtype=np.float32
    )
    feed = {input_name: images.astype(metadata.io_dtype)}
    for _ in range(ORT_WARMUP_RUNS):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Sets torch's intra-op thread count for the block (None: leaves it), then restores it."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
