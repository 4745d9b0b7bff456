"""One job's shard loop: the inputs of given shards, in order, through the C++ pipeline and a
model backend, each shard written atomically as soon as its last input is through. featx extract
runs it in its own process; featx.runtime.distributed runs it in Ray actors, a few shards at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from rich.console import Console

from featx.runtime.inputs import Inputs
from featx.runtime.pipeline import PipelineItems
from featx.runtime.preprocessed import PREFETCH_BATCHES, fallback_decoder
from featx.runtime.shards import ShardWriter


class ModelBackend(Protocol):
    """What extraction needs of a model: featx.Runner (ONNX) and featx.TorchRunner provide it.

    ``run`` maps a (batch, 3, H, W) array of preprocessed images to (batch, embedding_dim)
    embeddings; ``pipeline`` returns the C++ decode pipeline of ``items`` for the model's
    preprocessing (featx.runtime.pipeline.batch_pipeline).
    """

    arch: str
    embedding_dim: int

    def run(self, images: np.ndarray) -> np.ndarray: ...

    def pipeline(
        self, items: PipelineItems, batch_ends: list[int], workers: int, prefetch: int
    ) -> Any: ...


@dataclass
class _ShardRows:
    """What one shard collects until its last input has gone through the model."""

    index: int
    first_input: int
    stop_input: int
    usable_inputs: list[int] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)


class ShardExtraction:
    """Runs shards ``pending`` of a job (in that order) through one pipeline and the model and
    writes each with ``writer``. Shard k is inputs [k * shard_size, (k + 1) * shard_size)."""

    def __init__(
        self,
        runner: ModelBackend,
        writer: ShardWriter,
        inputs: Inputs,
        shard_size: int,
        pending: list[int],
    ):
        self.runner = runner
        self.writer = writer
        self.inputs = inputs
        self.shard_size = shard_size
        self.pending = pending

    def plan(self, batch_size: int) -> tuple[list[int], list[int]]:
        """Input indices to process, in order, and batch ends that never cross a shard."""
        order: list[int] = []
        batch_ends: list[int] = []
        for shard in self.pending:
            start, stop = self._bounds(shard)
            for first in range(start, stop, batch_size):
                order.extend(range(first, min(first + batch_size, stop)))
                batch_ends.append(len(order))
        return order, batch_ends

    def run(
        self,
        batch_size: int,
        workers: int,
        advance: Callable[[int], None] | None = None,
        console: Console | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Extracts the shards, yielding each one's manifest entry once its files are in place;
        ``advance(inputs)`` is told of each batch done."""
        order, batch_ends = self.plan(batch_size)
        items = self.inputs.items.pipeline_items(order, fallback_decoder(self.inputs.ids, order))
        pipeline = self.runner.pipeline(items, batch_ends, workers, PREFETCH_BATCHES)
        shards = iter(self.pending)
        current = self._open(next(shards, None))
        try:
            while (batch := pipeline.next()) is not None:
                first, rows, tensor, statuses = batch
                inputs = order[first : first + rows]
                usable = self._sort_rows(inputs, statuses, current)
                current.embeddings.append(self.runner.run(tensor)[usable])
                if advance is not None:
                    advance(rows)
                if inputs[-1] == current.stop_input - 1:
                    yield self._write(current)
                    current = self._open(next(shards, None))
        except KeyboardInterrupt:
            # The pipeline's workers finish the read they are in before they stop; one stuck in
            # a read (a hung network mount) holds the command up, so say what it waits on.
            if console is not None:
                console.print("interrupted: stopping the decode workers")
            pipeline.cancel()
            raise

    def _sort_rows(
        self, inputs: list[int], statuses: list[tuple[str, str]], shard: _ShardRows
    ) -> list[int]:
        """Rows of the batch that hold images; the others' errors recorded."""
        usable = []
        for row, (input_index, (status, message)) in enumerate(zip(inputs, statuses, strict=True)):
            if input_index in self.inputs.unusable:
                status, message = "error", self.inputs.unusable[input_index]
            if status == "ok":
                usable.append(row)
                shard.usable_inputs.append(input_index)
            else:
                shard.errors.append({"path": self.inputs.ids[input_index], "reason": message})
        return usable

    def _bounds(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.inputs))

    def _open(self, shard: int | None) -> _ShardRows | None:
        return None if shard is None else _ShardRows(shard, *self._bounds(shard))

    def _write(self, shard: _ShardRows) -> dict[str, Any]:
        embeddings = (
            np.concatenate(shard.embeddings)
            if shard.embeddings
            else np.empty((0, self.runner.embedding_dim), np.float32)
        )
        usable = shard.usable_inputs
        kept = self.inputs.kept_columns
        return self.writer.write(
            shard.index,
            shard.first_input,
            shard.stop_input - shard.first_input,
            [self.inputs.ids[i] for i in usable],
            embeddings,
            shard.errors,
            kept(usable) if kept is not None else None,
        )
