"""The reference (PIL + torchvision) implementation of a model's preprocessing policy.

This is the path users write by hand today; the parity check of every export feeds it real
photos, and the C++ image pipeline is measured against it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from featx.metadata import Preprocess


def reference_transform(preprocess: Preprocess) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalised (3, crop, crop) float32 tensor, torchvision eval style."""
    return transforms.Compose(
        [
            transforms.Resize(
                preprocess.resize_size,
                interpolation=InterpolationMode(preprocess.interpolation),
                antialias=True,
            ),
            transforms.CenterCrop(preprocess.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(preprocess.mean, preprocess.std),
        ]
    )


def open_rgb(path: str | Path) -> Image.Image:
    """Decodes an image file to RGB, applying its EXIF orientation."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")
