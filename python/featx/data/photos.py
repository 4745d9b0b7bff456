"""Real photographs for parity checks: the sample images bundled with scikit-learn."""

from __future__ import annotations

import functools

from PIL import Image


@functools.cache
def _arrays() -> tuple:
    # Imported here: scikit-learn costs ~0.8 s to import, and every featx command imports this
    # module (through featx.parity) while only exports and a few tests read the photos.
    from sklearn.datasets import load_sample_images

    return tuple(load_sample_images().images)


def sample_photos() -> list[Image.Image]:
    """scikit-learn's sample photos (a temple in China and a flower, 640x427 RGB)."""
    return [Image.fromarray(array) for array in _arrays()]
