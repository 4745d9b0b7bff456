"""GAN feature learning (DCGAN, Radford et al., 2016): the discriminator's features are the
extractor.

A generator G maps noise z ~ N(0, I) to images; the discriminator D is the arch's feature layer f
plus a linear real/fake logit. With BCE the binary cross-entropy on D's logits,

    discriminator loss = BCE(D(x), 1) + BCE(D(G(z)), 0)      (G's images detached)
    generator loss     = BCE(D(G(z)), 1)                      (the non-saturating form)

Both train from one backward pass of their sum (simultaneous updates): D's weights are detached
in the generator's term and G's images in the discriminator's, so each network gets only the
gradient of its own loss; one Adam holds both (DCGAN's recipe: lr 2e-4, betas (0.5, 0.999), no
weight decay). Accuracy is the discriminator's: the fraction of real and generated images it
labels correctly; the history also records each network's own mean loss per epoch. A healthy run
stays near the equilibrium (discriminator loss about 2 ln 2 = 1.39); an epoch whose mean
discriminator loss falls below DIVERGED_DISCRIMINATOR_LOSS is a collapse (the discriminator
rejects every generated image with confidence, the generator has lost) and stops the run with an
error before that epoch is saved.

The saved model is the arch's own with its feature layers trained as D's (for
``dcgan_discriminator``, the DCGAN discriminator's convolutions); featx-export cuts it at that
layer, the penultimate block. G and the real/fake logit are not saved.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from featx.features import extractor_feature_model
from featx.models.registry import Extractor
from featx.runtime.errors import FeatxError
from featx.runtime.metadata import Preprocess

NOISE_DIM = 64
GENERATOR_WIDTH = 32
GAN_LR = 2e-4
GAN_BETAS = (0.5, 0.999)
DIVERGED_DISCRIMINATOR_LOSS = 0.1


class Generator(nn.Module):
    """DCGAN's generator: noise -> 4x4 -> transposed convolutions doubling the size -> tanh,
    mapped into the extractor's normalised input space (its mean and std)."""

    def __init__(self, preprocess: Preprocess, width: int = GENERATOR_WIDTH):
        super().__init__()
        size = preprocess.crop_size
        doublings = (size // 4).bit_length() - 1
        if size < 8 or 4 * 2**doublings != size:
            raise FeatxError(
                f"--method gan generates images of 4 * 2^k pixels (8, 16, 32, 64, ...); the input "
                f"size is {size}. Pick another --image-size."
            )
        channels = [width * 2 ** (doublings - 1 - i) for i in range(doublings)]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(NOISE_DIM, channels[0], 4, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        ]
        for in_channels, out_channels in itertools.pairwise(channels):
            layers += [
                nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1), nn.Tanh()]
        self.layers = nn.Sequential(*layers)
        shape = (1, 3, 1, 1)
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.std).view(shape), persistent=False)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        pixels = (self.layers(noise[:, :, None, None]) + 1) / 2
        return (pixels - self.mean) / self.std


class Discriminator(nn.Module):
    """The arch's feature layer plus a real/fake logit."""

    def __init__(self, encoder: nn.Module, dim: int):
        super().__init__()
        self.encoder = encoder
        self.logit = nn.Linear(dim, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit(self.encoder(images)).squeeze(1).float()


class GANObjective(nn.Module):
    def __init__(self, extractor: Extractor, preprocess: Preprocess):
        super().__init__()
        self.model = extractor.build_model(None)
        encoder, layout = extractor_feature_model(extractor, self.model, preprocess.crop_size)
        self.discriminator = Discriminator(encoder, layout.embedding_dim)
        self.generator = Generator(preprocess)
        self._loss_sums = torch.zeros(2)
        self._batches = 0

    def train_mode(self) -> None:
        """Starts an epoch: the per-network loss means cover the training batches from here."""
        self.train()
        self._loss_sums, self._batches = torch.zeros(2), 0

    def _discriminate_frozen(self, images: torch.Tensor) -> torch.Tensor:
        """D(images) with D's weights as constants: the gradient reaches the images (and so G)
        only."""
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, frozen, (images,))

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        noise = torch.randn(images.shape[0], NOISE_DIM, device=images.device)
        generated = self.generator(noise)
        real_logits = self.discriminator(images)
        fake_logits = self.discriminator(generated.detach())
        discriminator_loss = F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        fooled = self._discriminate_frozen(generated)
        generator_loss = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        correct = int((real_logits > 0).sum()) + int((fake_logits < 0).sum())
        if self.training:
            self._loss_sums += torch.stack([discriminator_loss, generator_loss]).detach().cpu()
            self._batches += 1
        return discriminator_loss + generator_loss, correct / 2

    evaluate = step

    def epoch_figures(self) -> dict[str, float]:
        """The epoch's mean discriminator and generator losses (their sum is train_loss)."""
        means = (self._loss_sums / max(1, self._batches)).tolist()
        return {"train_discriminator_loss": means[0], "train_generator_loss": means[1]}

    def divergence(self, row: dict[str, float]) -> str | None:
        """Why the epoch in ``row`` is a collapse, or None."""
        loss = row["train_discriminator_loss"]
        if loss >= DIVERGED_DISCRIMINATOR_LOSS:
            return None
        return (
            f"the GAN diverged at epoch {row['epoch']:.0f}: the discriminator's loss fell to "
            f"{loss:.3f} (generator loss {row['train_generator_loss']:.2f}), it rejects every "
            "generated image and the generator no longer learns. That epoch was not saved. "
            "Lower --lr, or train fewer --epochs."
        )
