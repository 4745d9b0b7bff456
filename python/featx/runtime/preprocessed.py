"""Inputs preprocessed as extraction preprocesses them, for what needs the model's input tensors
rather than embeddings (INT8 calibration and its fidelity gate): the same C++ pipeline, the same
Pillow fallback for what the C++ decoder leaves."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from featx.runtime.decode import decode_rgb_bytes
from featx.runtime.errors import FeatxError
from featx.runtime.inputs import Inputs
from featx.runtime.metadata import Preprocess
from featx.runtime.pipeline import FallbackDecoder, batch_pipeline

PREFETCH_BATCHES = 3


def fallback_decoder(ids: list[str], order: list[int]) -> FallbackDecoder:
    """A pipeline's decoder of its item ``i`` (input ``order[i]``, named ``ids[order[i]]``) for
    what the C++ decoder leaves to Pillow: the RGB array, or why the input is unusable."""

    def decode(item: int, encoded: memoryview) -> np.ndarray | str:
        try:
            return decode_rgb_bytes(encoded, ids[order[item]])
        except (FeatxError, OSError, ValueError) as err:
            return str(err)

    return decode


def preprocessed_batches(
    inputs: Inputs,
    order: list[int],
    preprocess: Preprocess,
    batch_size: int,
    workers: int,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Inputs ``order`` (indices into ``inputs``), decoded and preprocessed for ``preprocess``
    in batches of up to ``batch_size``: ``(usable input indices, (rows, 3, H, W) float32)``
    per batch, the unusable inputs left out."""
    items = inputs.items.pipeline_items(order, fallback_decoder(inputs.ids, order))
    batch_ends = [
        min(end, len(order)) for end in range(batch_size, len(order) + batch_size, batch_size)
    ]
    pipeline = batch_pipeline(preprocess, "float32", items, batch_ends, workers, PREFETCH_BATCHES)
    while (batch := pipeline.next()) is not None:
        first, _, tensor, statuses = batch
        usable = [
            row
            for row, (status, _) in enumerate(statuses)
            if status == "ok" and order[first + row] not in inputs.unusable
        ]
        # Indexing by a list copies: the rows outlive the pipeline's reuse of its buffer.
        yield [order[first + row] for row in usable], tensor[usable]
