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
    """What a pipeline reads, in order. Item i is the file ``paths[i]``, or, with ``offsets``
    and ``sizes`` (one each per path), the ``sizes[i]`` bytes at ``offsets[i]`` of it (a tar
    member; a negative size marks an item already known to be unusable). ``fallback(i)`` decodes
    what the C++ decoder leaves (PNG, WebP, CMYK JPEG, ...) to an RGB array, or says why it
    cannot (a str); the pipeline's worker threads call it, so those decodes run in parallel and
    ahead of the model like the JPEGs. Without it such items are unusable ("fallback")."""

    paths: list[str]
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    fallback: Callable[[int], np.ndarray | str] | None = None


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
        items.paths, batch_ends, spec, workers, prefetch, items.offsets, items.sizes, items.fallback
    )
