"""torchvision backbones: the curated extractors and generic defaults for every other model."""

from __future__ import annotations

import functools

import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from featx.models.registry import Extractor, FeatureInfo, register_extractor
from featx.runtime.metadata import Preprocess


@functools.cache
def torchvision_names() -> list[str]:
    """torchvision's image classification models (detection, video, ... are not extractors)."""
    return sorted(list_models(module=torchvision.models))


def default_preprocess(name: str) -> Preprocess:
    """The eval transform of the model's default weights (read from torchvision's metadata, no
    download), or the ImageNet 256/224 bilinear policy for a model without published weights."""
    try:
        transform = get_model_weights(name).DEFAULT.transforms()
    except (ValueError, AttributeError, KeyError):
        return Preprocess(crop_size=224, resize_size=256)
    return Preprocess(
        crop_size=int(transform.crop_size[0]),
        resize_size=int(transform.resize_size[0]),
        interpolation=transform.interpolation.value,
        mean=tuple(transform.mean),
        std=tuple(transform.std),
    )


def _builder(name: str):
    def build(num_classes: int | None = None) -> nn.Module:
        return get_model(name, weights=None, num_classes=num_classes or 1000)

    return build


def generic_torchvision_extractor(name: str) -> Extractor:
    """A torchvision model outside the curated list: the input of its classifier head as the
    model computes it (featx.features.classifier_head)."""
    return Extractor(
        name=name,
        build=_builder(name),
        layer=None,
        pool="none",
        preprocess=default_preprocess(name),
        feature_info=None,
        description=f"torchvision {name}, its classifier's input (generic defaults)",
        curated=False,
        embedding="classifier",
    )


_CURATED = [
    # name, layer, pool, dim, stride, description
    ("resnet18", "layer4", "avg", 512, 32, "ResNet-18, global-average-pooled last stage"),
    ("resnet50", "layer4", "avg", 2048, 32, "ResNet-50, global-average-pooled last stage"),
    ("vgg16", "features", "avg", 512, 32, "VGG-16, average-pooled conv5 block"),
    ("vit_b_16", "encoder", "cls", 768, 16, "ViT-B/16, class token after the final LayerNorm"),
    ("mobilenet_v3_large", "features", "avg", 960, 32, "MobileNetV3-Large, pooled last stage"),
    ("efficientnet_b0", "features", "avg", 1280, 32, "EfficientNet-B0, pooled last stage"),
    # ConvNeXt's classifier starts with its own LayerNorm: the embedding is taken after it.
    ("convnext_tiny", "classifier.1", "none", 768, 0, "ConvNeXt-Tiny, pooled + normed last stage"),
]

for _name, _layer, _pool, _dim, _stride, _description in _CURATED:
    register_extractor(
        _name,
        layer=_layer,
        pool=_pool,
        preprocess=default_preprocess(_name),
        feature_info=FeatureInfo(dim=_dim, stride=_stride),
        description=_description,
    )(_builder(_name))
