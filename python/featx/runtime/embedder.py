"""featx.ray.Embedder: a featx-exported model as a callable class for Ray Data's
``Dataset.map_batches``, through the same C++ preprocessing and ONNX Runtime session as
featx extract (so the same images give the same embeddings).

A batch's image column holds encoded images (bytes, as ``read_binary_files``,
``read_parquet`` of image bytes or ``read_webdataset(decoder=None)`` give them) or decoded
(H, W, 3) uint8 RGB arrays (``read_images(mode="RGB")``). Encoded images go through the C++
decode pipeline in worker threads (PNG and other formats through Pillow in those threads, as in
featx extract); arrays are preprocessed in C++ as they are. An image that cannot be used gets a
zero embedding and its reason in the error column (empty where the row is fine): one bad image
never fails the job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from featx.runtime.decode import decode_rgb_bytes
from featx.runtime.errors import FeatxError
from featx.runtime.native import native
from featx.runtime.pipeline import PipelineItems, spec_dict
from featx.runtime.preprocessed import PREFETCH_BATCHES
from featx.runtime.runner import Runner

IMAGE_COLUMNS = ("image", "bytes", "jpg", "jpeg", "png", "webp")
"""The image column when none is named: the first of these a batch has."""


class Embedder:
    """``ds.map_batches(Embedder, fn_constructor_args=("model.onnx",), concurrency=N,
    batch_size=B)``: adds ``output_column`` ((rows, D) float32) and ``error_column`` to every
    batch. ``column`` names the image column (default: the first of IMAGE_COLUMNS present);
    ``threads`` are ONNX Runtime's (0: one per core), ``workers`` the decode threads (default:
    one per core)."""

    def __init__(
        self,
        model: str | Path,
        *,
        column: str | None = None,
        output_column: str = "embedding",
        error_column: str = "featx_error",
        device: str = "cpu",
        threads: int = 0,
        workers: int | None = None,
    ):
        self.runner = Runner(model, device=device, threads=threads, spinning=False)
        self.column = column
        self.output_column = output_column
        self.error_column = error_column
        self.workers = workers or os.cpu_count() or 1
        metadata = self.runner.metadata
        self.spec = spec_dict(metadata.preprocess, metadata.io_dtype)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        column = self._image_column(batch)
        values = batch[column]
        if len(values) == 0:
            embeddings = np.empty((0, self.runner.embedding_dim), np.float32)
            errors = np.array([], dtype=object)
        elif all(isinstance(v, np.ndarray) for v in values):
            embeddings, errors = self._embed_arrays(list(values))
        else:
            embeddings, errors = self._embed_encoded(list(values))
        return {**batch, self.output_column: embeddings, self.error_column: errors}

    def _image_column(self, batch: dict[str, Any]) -> str:
        if self.column is not None:
            if self.column not in batch:
                raise FeatxError(
                    f"the batch has no column {self.column!r}; its columns: {', '.join(batch)}"
                )
            return self.column
        for name in IMAGE_COLUMNS:
            if name in batch:
                return name
        raise FeatxError(
            f"no image column among {', '.join(batch)}; name it: Embedder(model, column=...)"
        )

    def _embed_encoded(self, values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Encoded images, one C++ pipeline batch: one buffer of all the bytes (the batch's
        values are separate objects; joining them is one copy, small next to decoding)."""
        encoded = [bytes(v) if v is not None else b"" for v in values]
        sizes = np.array([len(v) if values[i] is not None else -1 for i, v in enumerate(encoded)])
        starts = np.concatenate([[0], np.cumsum([len(v) for v in encoded])[:-1]]).astype(np.int64)
        block = iter([(b"".join(encoded), starts, sizes.astype(np.int64))])

        def fallback(item: int, data: memoryview) -> np.ndarray | str:
            try:
                return decode_rgb_bytes(data, f"row {item}")
            except (FeatxError, OSError, ValueError) as err:
                return str(err)

        items = PipelineItems([], blocks=lambda: next(block, None), fallback=fallback)
        pipeline = self.runner.pipeline(items, [len(values)], self.workers, PREFETCH_BATCHES)
        _, _, tensor, statuses = pipeline.next()
        return self._embed(tensor, [message if s != "ok" else "" for s, message in statuses])

    def _embed_arrays(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        tensor = np.zeros(
            (len(images), 3, self.spec["crop_size"], self.spec["crop_size"]),
            np.float16 if self.spec["output"] == "float16" else np.float32,
        )
        errors = []
        for row, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                errors.append(
                    f"expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape} "
                    "(read_images(..., mode='RGB') gives those)"
                )
                continue
            try:
                tensor[row] = native().preprocess_rgb(np.ascontiguousarray(image), self.spec)
            except ValueError as err:
                errors.append(str(err))
                continue
            errors.append("")
        return self._embed(tensor, errors)

    def _embed(self, tensor: np.ndarray, errors: list[str]) -> tuple[np.ndarray, np.ndarray]:
        embeddings = np.asarray(self.runner.run(tensor), dtype=np.float32)
        failed = [row for row, error in enumerate(errors) if error]
        embeddings[failed] = 0.0
        return embeddings, np.array(errors, dtype=object)
