"""featx.Runner: a featx-exported ONNX model behind the C++ ONNX Runtime session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from featx.runtime.errors import FeatxError
from featx.runtime.instruction_set import check_int8_runs_here
from featx.runtime.metadata import ModelMetadata, read_metadata
from featx.runtime.native import native
from featx.runtime.ort_config import cpu_optimization_level
from featx.runtime.pipeline import PipelineItems, batch_pipeline

DEVICES = ("cpu", "cuda")


class Runner:
    """Runs batches of preprocessed images through an exported model.

    ``run`` takes (batch, 3, H, W) arrays of the model's input dtype and returns (batch, D)
    embeddings; the array memory is used in place and the GIL is released during inference.
    ``threads`` is ONNX Runtime's intra-op thread count (0: one per core); ``spinning=False``
    makes idle ORT threads sleep instead of spin, which leaves the cores to decode workers.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "cpu",
        threads: int = 0,
        spinning: bool = True,
    ):
        path = checked_model_path(model, device)
        # The CPU optimisation level depends on the model's dtype (featx.runtime.ort_config: a
        # layout optimiser crashes ORT on fp16 ViT), which only the metadata says, and ORT reads
        # metadata only by loading the model: an unoptimised load first (ResNet-50: ~40 ms warm,
        # about what the real session's load costs), then the session, which reads it again.
        stored = read_metadata(path)
        # On any device: int8 ops the CUDA provider lacks run on the CPU's kernels.
        check_int8_runs_here(stored.int8, str(path))
        level = cpu_optimization_level(stored.dtype) if device == "cpu" else "all"
        try:
            self._session = native().Session(str(path), device, threads, level, True, spinning)
        except RuntimeError as err:
            raise FeatxError(str(err)) from err
        self.metadata = ModelMetadata.from_props(self._session.metadata, where=str(path))
        self.path = path
        self.device = device

    @property
    def arch(self) -> str:
        return self.metadata.arch

    @property
    def embedding_dim(self) -> int:
        return int(self._session.embedding_dim)

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(np.float16 if self.metadata.io_dtype == "float16" else np.float32)

    @property
    def provider(self) -> str:
        return str(self._session.provider)

    def run(self, images: np.ndarray) -> np.ndarray:
        """(batch, 3, H, W) images -> (batch, D) embeddings."""
        return self._session.run(images)

    def pipeline(
        self, items: PipelineItems, batch_ends: list[int], workers: int, prefetch: int
    ) -> Any:
        """A C++ decode/preprocess pipeline producing batches for this model's input
        (featx.runtime.pipeline.batch_pipeline)."""
        return batch_pipeline(
            self.metadata.preprocess, self.metadata.io_dtype, items, batch_ends, workers, prefetch
        )


def checked_model_path(model: str | Path, device: str) -> Path:
    """``model`` as a Path, once it names a file and ``device`` is one featx runs on."""
    path = Path(model)
    if not path.is_file():
        raise FeatxError(f"no such model file: {path}")
    if device not in DEVICES:
        raise FeatxError(f"unknown device {device!r}; choose {' or '.join(DEVICES)}")
    return path
