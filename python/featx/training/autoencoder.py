"""Autoencoder training for encoder-decoder archs: plain, denoising and masked reconstruction.

With x the (normalised) image, x~ its corrupted copy and x^ = decoder(encoder(x~)):
  plain:     x~ = x,                       loss = mean over pixels of d(x^, x)
  denoising: x~ = x + sigma * N(0, 1)      (``noise`` = sigma, in normalised-input units)
  masked:    the image is cut into an 8 x 8 grid of patches (MAE's patch masking); a random
             ``mask_ratio`` of each image's patches is set to 0 (the dataset mean after
             normalisation) and the loss is the mean of d(x^, x) over the masked patches only.
d is the squared error (``mse``) or the absolute error (``l1``); noise and masking combine.
A convolutional encoder cannot drop the masked patches as MAE's ViT does, so it sees them blanked.
The saved model is the whole autoencoder; featx-export cuts it at the feature layer (the
encoder's code for ``conv_autoencoder``), leaving the decoder out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featx.models.registry import Extractor
from featx.options import RECONSTRUCTION_LOSSES
from featx.runtime.errors import FeatxError

MASK_GRID = 8
"""Patches per side for --mask-ratio: 4 x 4-pixel patches on the seeds' 32 x 32 inputs."""


def build_autoencoder(extractor: Extractor, input_size: int) -> nn.Module:
    """The arch's model, checked to be an encoder-decoder that reconstructs its input."""
    model = extractor.build_model(None)
    parts = [name for name in ("encoder", "decoder") if not hasattr(model, name)]
    if parts:
        raise FeatxError(
            f"arch {extractor.name!r} has no {' or '.join(parts)} module: --method autoencoder "
            "trains encoder-decoder archs (such as conv_autoencoder); use --method simclr or "
            "simsiam for other archs."
        )
    probe = torch.zeros(2, 3, input_size, input_size)
    with torch.no_grad():
        output = model.eval()(probe)
    if output.shape != probe.shape:
        raise FeatxError(
            f"arch {extractor.name!r} maps a {tuple(probe.shape[1:])} input to "
            f"{tuple(output.shape[1:])}: not a reconstruction. Pick an --image-size its "
            "encoder and decoder invert (conv_autoencoder: a multiple of 8)."
        )
    return model


def patch_mask(images: torch.Tensor, ratio: float, grid: int = MASK_GRID) -> torch.Tensor:
    """(B, 1, H, W) of 1.0 on a random ``ratio`` of each image's grid x grid patches, else 0."""
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    if height % grid or width % grid:
        raise FeatxError(
            f"--mask-ratio cuts the image into {grid} x {grid} patches; the input size "
            f"{height} x {width} is not a multiple of {grid}. Pick another --image-size."
        )
    patches = grid * grid
    masked = round(ratio * patches)
    order = torch.rand(batch, patches, device=images.device).argsort(dim=1)
    cells = torch.zeros(batch, patches, device=images.device)
    cells.scatter_(1, order[:, :masked], 1.0)
    cells = cells.view(batch, 1, grid, grid)
    return cells.repeat_interleave(height // grid, dim=2).repeat_interleave(width // grid, dim=3)


class AutoencoderObjective(nn.Module):
    """Reconstruction loss; no accuracy (the k-NN monitor or the held-out loss judges)."""

    def __init__(self, model: nn.Module, loss: str, noise: float, mask_ratio: float):
        super().__init__()
        if loss not in RECONSTRUCTION_LOSSES:
            raise FeatxError(
                f"unknown --reconstruction {loss!r}; choose {', '.join(RECONSTRUCTION_LOSSES)}"
            )
        if noise < 0:
            raise FeatxError(f"--noise must be >= 0 (a standard deviation), got {noise}")
        if not 0 <= mask_ratio < 1:
            raise FeatxError(f"--mask-ratio must be within [0, 1), got {mask_ratio}")
        if mask_ratio > 0 and round(mask_ratio * MASK_GRID * MASK_GRID) == 0:
            raise FeatxError(
                f"--mask-ratio {mask_ratio} masks none of the {MASK_GRID * MASK_GRID} patches"
            )
        self.model = model
        self.loss = loss
        self.noise = noise
        self.mask_ratio = mask_ratio

    def train_mode(self) -> None:
        self.model.train()

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, None]:
        corrupted = images
        if self.noise > 0:
            corrupted = corrupted + self.noise * torch.randn_like(images)
        mask = None
        if self.mask_ratio > 0:
            mask = patch_mask(images, self.mask_ratio)
            corrupted = corrupted * (1 - mask)
        reconstruction = self.model(corrupted).float()
        error = (
            F.mse_loss(reconstruction, images.float(), reduction="none")
            if self.loss == "mse"
            else F.l1_loss(reconstruction, images.float(), reduction="none")
        )
        if mask is None:
            return error.mean(), None
        return (error * mask).sum() / (mask.sum() * images.shape[1]), None

    evaluate = step
