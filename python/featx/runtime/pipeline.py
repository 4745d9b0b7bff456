"""The C++ decode -> resize -> crop -> normalise pipeline (featx._runner.BatchPipeline), set up
from a model's preprocessing policy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featx.runtime.decode import MAX_PIXELS
from featx.runtime.metadata import Preprocess
from featx.runtime.native import native

EncodedBlock = tuple[int, str] | tuple[Any, np.ndarray, np.ndarray]
"""A block of a block reader: ``(data, starts, sizes)``, one int64 start and size per item into
the bytes-like ``data`` (size -1: no image in that row), or ``(count, reason)`` for ``count``
items that cannot be read."""

FallbackDecoder = Callable[[int, memoryview], np.ndarray | str]
"""``fallback(item, encoded)``: item ``item``'s RGB array decoded from its encoded bytes (a
read-only view valid during the call only), or a str saying why it is unusable."""


def spec_dict(preprocess: Preprocess, output: str = "float32") -> dict[str, Any]:
    """The spec of featx._runner.preprocess_file / preprocess_rgb for a preprocessing policy."""
    return {
        "crop_size": preprocess.crop_size,
        "resize_size": preprocess.resize_size,
        "interpolation": preprocess.interpolation,
        "policy": preprocess.policy,
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
        "output": output,
        "max_pixels": MAX_PIXELS,
    }


@dataclass(frozen=True)
class PipelineItems:
    """What a pipeline reads, in order (as many items as its batches hold), each

    - the file ``paths[i]``; or, with ``offsets`` and ``sizes`` (one each per path), the
      ``sizes[i]`` bytes at ``offsets[i]`` of it (a tar member; a negative size marks an item
      already known to be unusable);
    - or, with ``blocks`` (and no paths), the next item of the blocks that ``blocks()`` returns
      in order (None after the last): a thread of the pipeline calls it ahead of the decode
      workers, and the bytes reach the decoder without a copy (parquet record batches).

    ``fallback`` decodes what the C++ decoder leaves (PNG, WebP, CMYK JPEG, ...); the pipeline's
    worker threads call it, so those decodes run in parallel and ahead of the model like the
    JPEGs. Without it such items are unusable ("fallback")."""

    paths: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    blocks: Callable[[], EncodedBlock | None] | None = None
    fallback: FallbackDecoder | None = None


def batch_pipeline(
    preprocess: Preprocess,
    output: str,
    items: PipelineItems,
    batch_ends: list[int],
    workers: int,
    prefetch: int,
) -> Any:
    """The C++ decode/preprocess pipeline producing ``output``-typed batches of ``items`` for
    ``preprocess``: ``pipeline.next()`` returns ``(first_item, rows, tensor, statuses)`` or None
    at the end; ``tensor`` is valid until the next call."""
    spec = spec_dict(preprocess, output=output)
    return native().BatchPipeline(
        batch_ends,
        spec,
        workers,
        prefetch,
        paths=items.paths,
        offsets=items.offsets,
        sizes=items.sizes,
        blocks=items.blocks,
        fallback=items.fallback,
    )
