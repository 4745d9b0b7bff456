"""The reference (PIL + torchvision) implementation of a model's preprocessing policy.

This is the path users write by hand today; the parity check of every export feeds it real
photos, and the C++ image pipeline (featx.runtime.pipeline) is measured against it. It decodes
with the runtime's PIL decoder (featx.runtime.decode), so both see the same pixels for every file.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from featx.runtime.metadata import Preprocess


def reference_transform(preprocess: Preprocess) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalised (3, crop, crop) float32 tensor, torchvision eval style."""
    squash = preprocess.policy == "resize_squash_center_crop"
    size = preprocess.resize_size
    return transforms.Compose(
        [
            transforms.Resize(
                (size, size) if squash else size,
                interpolation=InterpolationMode(preprocess.interpolation),
                antialias=True,
            ),
            transforms.CenterCrop(preprocess.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(preprocess.mean, preprocess.std),
        ]
    )
