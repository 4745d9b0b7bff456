"""Image transforms for training, all derived from the extractor's Preprocess metadata.

The eval transform is exactly the one featx-export stores in the ONNX file (resize shorter side,
center crop, normalise), so validation accuracy is measured on the inputs the exported model
will see. Train augmentations end in the same size, mean and std.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image, ImageFilter
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from featx.options import AUGMENTATIONS
from featx.preprocess import reference_transform
from featx.runtime.errors import FeatxError
from featx.runtime.metadata import Preprocess


def eval_transform(preprocess: Preprocess) -> Callable[[Image.Image], torch.Tensor]:
    return reference_transform(preprocess)


def train_transform(
    preprocess: Preprocess, policy: str = "standard"
) -> Callable[[Image.Image], torch.Tensor]:
    """``standard``: random resized crop (scale 0.35-1), horizontal flip, mild colour jitter;
    ``light``: random resized crop (scale 0.7-1, near-square) and nothing else, for data whose
    meaning changes when mirrored (digits, text); ``none``: the eval transform."""
    if policy not in AUGMENTATIONS:
        raise FeatxError(f"unknown --augment {policy!r}; choose {', '.join(AUGMENTATIONS)}")
    if policy == "none":
        return eval_transform(preprocess)
    interpolation = InterpolationMode(preprocess.interpolation)
    size = preprocess.crop_size
    if policy == "light":
        steps = [
            transforms.RandomResizedCrop(
                size, scale=(0.7, 1.0), ratio=(0.9, 1.1), interpolation=interpolation
            )
        ]
    else:
        steps = [
            transforms.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=interpolation),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.3, 0.3, 0.3),
        ]
    return transforms.Compose(
        [*steps, transforms.ToTensor(), transforms.Normalize(preprocess.mean, preprocess.std)]
    )


class PilGaussianBlur:
    """Gaussian blur of a PIL image with sigma drawn from [low, high] by torch's RNG (so runs
    are repeatable). PIL's filter: torchvision's GaussianBlur took 39 ms on a 32x32 image here,
    PIL's well under 1 ms."""

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def __call__(self, image: Image.Image) -> Image.Image:
        sigma = float(torch.empty(1).uniform_(self.low, self.high))
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))


def two_views(
    preprocess: Preprocess, flip: bool = True
) -> Callable[[Image.Image], tuple[torch.Tensor, torch.Tensor]]:
    """SimSiam's pair of independently augmented views: strong crops, colour jitter, greyscale
    and blur (SimSiam paper's recipe, scaled to the model's input size)."""
    size = preprocess.crop_size
    steps = [
        transforms.RandomResizedCrop(
            size, scale=(0.3, 1.0), interpolation=InterpolationMode(preprocess.interpolation)
        ),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([PilGaussianBlur(0.1, 1.5)], p=0.5),
    ]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    view = transforms.Compose(
        [*steps, transforms.ToTensor(), transforms.Normalize(preprocess.mean, preprocess.std)]
    )
    return lambda image: (view(image), view(image))
