"""The C++ decode -> resize -> crop -> normalise pipeline (featx._runner.BatchPipeline), set up
from a model's preprocessing policy."""

from __future__ import annotations

from collections.abc import Callable
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


def batch_pipeline(
    preprocess: Preprocess,
    output: str,
    paths: list[str],
    batch_ends: list[int],
    workers: int,
    prefetch: int,
    ranges: tuple[list[int], list[int]] | None = None,
    fallback: Callable[[int], np.ndarray | str] | None = None,
) -> Any:
    """The C++ decode/preprocess pipeline producing ``output``-typed batches for ``preprocess``.

    ``ranges`` (offsets, sizes), one per path, makes each item that byte range of its file (a
    tar member); a negative size marks an item already known to be unusable. ``fallback(item)``
    decodes what the C++ decoder leaves (PNG, WebP, CMYK JPEG, ...) to an RGB array, or says why
    it cannot (a str); the pipeline's worker threads call it, so those decodes run in parallel
    and ahead of the model like the JPEGs.

    ``pipeline.next()`` returns ``(first_item, rows, tensor, statuses)`` or None at the end;
    ``tensor`` is valid until the next call. Without ``fallback``, rows the C++ decoder
    cannot decode come back with status "fallback", unusable.
    """
    spec = spec_dict(preprocess, output=output)
    offsets, sizes = ranges if ranges is not None else ([], [])
    return native().BatchPipeline(
        paths, batch_ends, spec, workers, prefetch, offsets, sizes, fallback
    )
