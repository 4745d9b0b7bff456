"""The seed models: small architectures trained from scratch on small images (32x32 RGB).

Each one is an image model so the whole pipeline (export, runner, extract) treats them alike;
the sequence encoders read an image as a sequence of pixel rows (recurrent) or patches
(attention). Their curated feature layer leaves the task head out of the export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featx.models.registry import FeatureInfo, register_extractor
from featx.runtime.metadata import Preprocess

SEED_IMAGE_SIZE = 32
SEED_PREPROCESS = Preprocess(
    crop_size=SEED_IMAGE_SIZE,
    resize_size=SEED_IMAGE_SIZE,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)
DEFAULT_NUM_CLASSES = 10


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """conv-pool-conv-pool-fc classifier; the embedding is the hidden fully connected layer."""

    def __init__(self, num_classes: int = DEFAULT_NUM_CLASSES, width: int = 32, dim: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, width),
            nn.MaxPool2d(2),
            conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
        )
        cells = (SEED_IMAGE_SIZE // 4) ** 2
        self.embed = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * cells, dim, bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
        )
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(self.features(images)))


class RecurrentEncoder(nn.Module):
    """Reads the image top to bottom, one pixel row (all channels) per time step."""

    def __init__(self, cell: str, num_classes: int = DEFAULT_NUM_CLASSES, hidden: int = 128):
        super().__init__()
        rnn_type = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = rnn_type(3 * SEED_IMAGE_SIZE, hidden, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rows = images.permute(0, 2, 1, 3).flatten(2)
        states = self.rnn(rows)[0]
        return self.classifier(self.norm(states.mean(dim=1)))


class SelfAttention(nn.Module):
    """Multi-head self-attention over (batch, tokens, dim) through scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length = tokens.shape[0], tokens.shape[1]
        qkv = self.qkv(tokens).reshape(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(attended.transpose(1, 2).flatten(2))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attention(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class PatchTransformer(nn.Module):
    """A small ViT: 4x4 patches as tokens plus a class token, pre-norm encoder blocks."""

    def __init__(
        self,
        num_classes: int = DEFAULT_NUM_CLASSES,
        patch: int = 4,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
    ):
        super().__init__()
        tokens = (SEED_IMAGE_SIZE // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls, patches], dim=1) + self.position
        return self.head(self.norm(self.blocks(tokens))[:, 0])


class ConvAutoencoder(nn.Module):
    """Strided conv encoder to a 16x4x4 code, transposed-conv decoder back to the image."""

    def __init__(self, code_channels: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(
            conv_bn_relu(3, 32, stride=2),
            conv_bn_relu(32, 64, stride=2),
            nn.Conv2d(64, code_channels, 3, stride=2, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(code_channels, 64, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))


class DCGANDiscriminator(nn.Module):
    """DCGAN's discriminator (Radford et al., 2016) for 32x32 images: 4x4 stride-2 convolutions,
    LeakyReLU(0.2), BatchNorm after all but the first, no pooling; ``features`` (the last block,
    4x4 cells) is the penultimate layer. ``classifier`` gives class logits when the arch is
    trained as a classifier; `featx train --method gan` adds its own real/fake logit instead."""

    def __init__(self, num_outputs: int = 1, width: int = 32):
        super().__init__()

        def block(in_channels: int, out_channels: int, norm: bool) -> list[nn.Module]:
            conv = nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=not norm)
            return [conv, *([nn.BatchNorm2d(out_channels)] if norm else []), nn.LeakyReLU(0.2)]

        self.features = nn.Sequential(
            *block(3, width, norm=False),
            *block(width, 2 * width, norm=True),
            *block(2 * width, 4 * width, norm=True),
        )
        self.classifier = nn.Linear(4 * width * (SEED_IMAGE_SIZE // 8) ** 2, num_outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).flatten(1))


def small_conv_trunk(dim: int = 128) -> nn.Sequential:
    """A compact conv encoder ending in a pooled ``dim`` vector (SimSiam's default backbone)."""
    return nn.Sequential(
        conv_bn_relu(3, 32),
        conv_bn_relu(32, 64, stride=2),
        conv_bn_relu(64, dim, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class SimSiam(nn.Module):
    """Encoder + projector (+ predictor used only in training). The encoder is what is exported.

    ``forward`` returns the projection z; training calls ``predictor`` on it for p.
    """

    def __init__(
        self, encoder: nn.Module, encoder_dim: int, proj_dim: int = 128, pred_dim: int = 32
    ):
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Sequential(
            nn.Linear(encoder_dim, proj_dim, bias=False),
            nn.BatchNorm1d(proj_dim),
            nn.ReLU(inplace=True),
            nn.Linear(proj_dim, proj_dim, bias=False),
            nn.BatchNorm1d(proj_dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(proj_dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, proj_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(images))


def _register_seed(name: str, layer: str, pool: str, dim: int, stride: int, description: str):
    return register_extractor(
        name,
        layer=layer,
        pool=pool,
        preprocess=SEED_PREPROCESS,
        feature_info=FeatureInfo(dim=dim, stride=stride),
        description=description,
    )


@_register_seed(
    "small_cnn", "embed", "none", 128, 0, "seed CNN (conv-pool-conv-pool-fc), fc embedding"
)
def build_small_cnn(num_classes: int | None = None) -> nn.Module:
    return SmallCNN(num_classes or DEFAULT_NUM_CLASSES)


@_register_seed("gru_encoder", "norm", "none", 128, 0, "seed GRU over pixel rows, mean state")
def build_gru_encoder(num_classes: int | None = None) -> nn.Module:
    return RecurrentEncoder("gru", num_classes or DEFAULT_NUM_CLASSES)


@_register_seed("lstm_encoder", "norm", "none", 128, 0, "seed LSTM over pixel rows, mean state")
def build_lstm_encoder(num_classes: int | None = None) -> nn.Module:
    return RecurrentEncoder("lstm", num_classes or DEFAULT_NUM_CLASSES)


@_register_seed("transformer_encoder", "norm", "cls", 64, 4, "seed patch transformer, class token")
def build_transformer_encoder(num_classes: int | None = None) -> nn.Module:
    return PatchTransformer(num_classes or DEFAULT_NUM_CLASSES)


@_register_seed(
    "conv_autoencoder", "encoder", "none", 256, 8, "seed conv autoencoder, encoder code"
)
def build_conv_autoencoder(num_classes: int | None = None) -> nn.Module:
    return ConvAutoencoder()


@_register_seed(
    "dcgan_discriminator",
    "features",
    "avg",
    128,
    8,
    "seed DCGAN discriminator, penultimate conv block (featx train --method gan)",
)
def build_dcgan_discriminator(num_classes: int | None = None) -> nn.Module:
    return DCGANDiscriminator(num_classes or 1)


@_register_seed(
    "simsiam_cnn", "encoder", "none", 128, 0, "seed SimSiam, encoder (projector dropped)"
)
def build_simsiam_cnn(num_classes: int | None = None) -> nn.Module:
    return SimSiam(small_conv_trunk(128), encoder_dim=128)
