"""Model preparation for parity tests and training baselines."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from featx.models import get_extractor
from featx.models.checkpoint import save_checkpoint
from featx.runtime.metadata import Preprocess


def random_init_checkpoint(arch: str, size: int, path: Path) -> Path:
    """A featx checkpoint of ``arch`` at random initialisation (seed 0) for ``size``-pixel
    inputs: the baseline a trained model's embeddings must beat."""
    extractor = get_extractor(arch)
    torch.manual_seed(0)
    return save_checkpoint(
        path,
        extractor.build_model(None),
        arch,
        preprocess=Preprocess.for_crop(size, extractor.preprocess),
    )


def random_batchnorm_checkpoint(arch: str, path: Path) -> Path:
    """A featx checkpoint of ``arch`` at random initialisation (seed 0) with trained-looking
    BatchNorm statistics (randomize_batchnorm): the int8 benchmarks' stand-in for a trained
    model, where no weights can be downloaded."""
    torch.manual_seed(0)
    return save_checkpoint(path, randomize_batchnorm(get_extractor(arch).build_model()), arch)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every BatchNorm non-trivial statistics and affine parameters.

    Freshly initialised BatchNorms (mean 0, var 1, weight 1, bias 0) are near-identities, so a
    folding bug would go unseen; trained-looking values make folding change the weights.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
            if module.affine:
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


TIMM_ARCHS = {
    "resnet18": "CNN",
    "mobilenetv3_small_100": "mobile net",
    "convnext_atto": "ConvNeXt",
    "deit_tiny_distilled_patch16_224": "plain ViT, distillation token",
    "levit_128s": "hybrid, BatchNorm inside attention",
    "fastvit_t8": "hybrid, re-parameterisable blocks",
    "efficientnet_b0": "CNN, squeeze-excitation, BatchNormAct",
    "vit_small_patch14_reg4_dinov2": "DINOv2 ViT: register tokens, LayerScale, 518 input",
    "cait_xxs24_224": "class-attention, LayerScale",
    "swin_tiny_patch4_window7_224": "hierarchical: shifted windows, relative position bias",
    "eva02_tiny_patch14_224": "EVA-02: rotary embeddings, SwiGLU",
    "mobilevit_xxs": "mobile hybrid (traced with timm's leaf modules)",
}
"""The timm architectures featx is checked on (tests/test_timm.py, benchmarks/timm_report.py);
the first six are the default suite's representative half."""
