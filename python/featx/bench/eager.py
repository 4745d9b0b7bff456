"""The baseline featx is measured against: what users write today, timed honestly.

Eager extraction is the common hand-written loop: a torch DataLoader whose worker processes decode
with PIL and apply the torchvision transform, the model in eval mode under inference_mode, the
features gathered and saved with ``np.save``. Alongside it, PIL preprocessing on one core, the
ceiling of that loop's decode stage.

Timings are wall-clock (``time.perf_counter``) with warm-up excluded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from featx.preprocess import reference_transform
from featx.runtime.decode import open_rgb
from featx.runtime.metadata import Preprocess


@dataclass(frozen=True)
class EagerResult:
    """One timed eager extraction: ``images`` featurised in ``seconds`` of wall-clock time."""

    images: int
    seconds: float


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
    device: str = "cpu",
    warmup: bool = True,
) -> EagerResult:
    """Extracts features of ``paths`` with ``model`` (images -> (B, D)) into ``out_file``.

    ``workers`` DataLoader processes decode and preprocess (0: the main process does); ``device``
    is where the model runs (batches are copied there as a user's loop copies them).
    With ``warmup`` the model first runs one untimed batch of zeros (callers timing the whole call
    after a warm run pass False); the timed span runs from starting the DataLoader (its worker
    start-up included, as users pay it) to the saved file.
    """
    model = model.eval().to(device)
    loader = DataLoader(
        ImageFiles(paths, reference_transform(preprocess)),
        batch_size=batch_size,
        num_workers=workers,
    )
    with torch.inference_mode():
        if warmup:
            model(torch.zeros(batch_size, *preprocess.input_shape, device=device))
        start = time.perf_counter()
        features = torch.cat([model(batch.to(device)).cpu() for batch in loader]).numpy()
        np.save(out_file, features)
        seconds = time.perf_counter() - start
    return EagerResult(images=len(features), seconds=seconds)


def pil_preprocess_pass(
    paths: Sequence[str | Path], preprocess: Preprocess
) -> Callable[[], list[np.ndarray]]:
    """One pass of PIL decode + the torchvision eval transform over ``paths``, one image at a time
    on one core (the counterpart of featx.bench.extraction.cpp_preprocess_pass); each call
    returns the tensors."""
    transform = reference_transform(preprocess)

    def run() -> list[np.ndarray]:
        with _torch_threads(1):
            return [transform(open_rgb(path)).numpy() for path in paths]

    return run


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Sets torch's intra-op thread count for the block, then restores it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
