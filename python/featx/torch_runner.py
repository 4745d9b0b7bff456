"""featx.TorchRunner: a checkpoint's feature model run by PyTorch (optionally featx.fuse'd),
behind the same interface as featx.Runner, so `featx extract --backend torch` reuses the C++
decode/preprocess pipeline, the shards, the manifest and resume unchanged.

It is the ``torch`` backend of extraction, registered under the ``featx.backends`` entry points
(pyproject.toml): the runtime finds it there and never imports it (featx.runtime.extract).

On CUDA the model runs in float16 with channels_last activations (the fused kernels' native
layout); on CPU in float32 (fused ops then compute with PyTorch ops unless TRITON_INTERPRET=1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from featx.features import extractor_feature_model
from featx.fusion import fuse as fuse_model
from featx.models.checkpoint import load_model
from featx.runtime.errors import FeatxError
from featx.runtime.metadata import Preprocess
from featx.runtime.pipeline import PipelineItems, batch_pipeline
from featx.runtime.runner import checked_model_path


class TorchRunner:
    """Runs batches of preprocessed images through a checkpoint's feature model in PyTorch."""

    def __init__(
        self,
        model: str | Path,
        *,
        arch: str | None = None,
        device: str = "cpu",
        fuse: bool = False,
        threads: int = 0,
    ):
        path = checked_model_path(model, device)
        if device == "cuda" and not torch.cuda.is_available():
            raise FeatxError(
                "--device cuda: PyTorch sees no CUDA GPU here; use --device cpu or a CUDA build "
                "of PyTorch on a GPU machine."
            )
        if threads > 0:
            torch.set_num_threads(threads)
        loaded = load_model(path, arch=arch)
        extractor = loaded.extractor
        self.preprocess: Preprocess = extractor.preprocess
        feature_model, layout = extractor_feature_model(
            extractor, loaded.module, self.preprocess.crop_size
        )
        if fuse:
            feature_model = fuse_model(feature_model)
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if device == "cuda" else torch.preserve_format
        self.model = feature_model.eval().to(self.device, self.dtype)
        self.model = self.model.to(memory_format=self.memory_format)
        self.arch = loaded.arch
        self.embedding_dim = layout.embedding_dim

    def run(self, images: np.ndarray) -> np.ndarray:
        """(batch, 3, H, W) float32 images -> (batch, D) float32 embeddings."""
        batch = torch.from_numpy(images).to(
            self.device, self.dtype, memory_format=self.memory_format
        )
        with torch.inference_mode():
            return self.model(batch).float().cpu().numpy()

    def pipeline(
        self, items: PipelineItems, batch_ends: list[int], workers: int, prefetch: int
    ) -> Any:
        """The C++ decode/preprocess pipeline, configured by the checkpoint's preprocessing."""
        return batch_pipeline(self.preprocess, "float32", items, batch_ends, workers, prefetch)
