"""The extractor registry: which layer, pooling and preprocessing make a model an extractor.

Curated entries are registered with ``@register_extractor`` (featx.models.seeds and
featx.models.torchvision_models register theirs); featx.models.catalog looks names up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from featx.runtime.metadata import POOLINGS, Preprocess


@dataclass(frozen=True)
class FeatureInfo:
    """Shape of the default features: embedding ``dim`` and the layer's ``stride`` (input pixels
    per feature-map cell; 0 where the layer has no spatial grid)."""

    dim: int
    stride: int


EMBEDDINGS = ("output", "classifier", "pre_logits")
"""The default-embedding rules (featx.features.build_feature_model applies them)."""


@dataclass(frozen=True)
class Extractor:
    """A model architecture plus its curated feature-extraction defaults."""

    name: str
    build: Callable[[int | None], nn.Module]
    layer: str | None
    """The feature layer; None: the tensor ``embedding`` names."""
    pool: str | None
    """None: the embedding is used as it is and must be one vector per image."""
    preprocess: Preprocess
    feature_info: FeatureInfo | None
    description: str = ""
    curated: bool = True
    deploy: Callable[[nn.Module], list[str]] | None = None
    """Puts a built model into its inference form in place before BatchNorm folding (timm's
    re-parameterisable blocks) and returns the names of the blocks it changed."""
    embedding: str = "output"
    """The default embedding when no layer is named (one of EMBEDDINGS): the model's own
    ``output``; its ``classifier``'s input, for archs whose classifier featx knows; timm's
    ``pre_logits`` features."""

    def build_model(self, num_classes: int | None = None) -> nn.Module:
        """A randomly initialised model (no download); ``num_classes`` sizes the head."""
        return self.build(num_classes)


_REGISTRY: dict[str, Extractor] = {}


def register_extractor(
    name: str,
    *,
    layer: str,
    pool: str,
    preprocess: Preprocess,
    feature_info: FeatureInfo,
    description: str = "",
) -> Callable[[Callable[[int | None], nn.Module]], Callable[[int | None], nn.Module]]:
    """Registers ``build(num_classes) -> nn.Module`` as the extractor ``name``."""
    if pool not in POOLINGS:
        raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")

    def decorate(build: Callable[[int | None], nn.Module]) -> Callable[[int | None], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"extractor {name!r} is already registered")
        _REGISTRY[name] = Extractor(
            name=name,
            build=build,
            layer=layer,
            pool=pool,
            preprocess=preprocess,
            feature_info=feature_info,
            description=description,
        )
        return build

    return decorate


def curated(name: str) -> Extractor | None:
    """The extractor registered as ``name``, or None."""
    return _REGISTRY.get(name)


def curated_names() -> list[str]:
    """Names of the registered extractors, sorted."""
    return sorted(_REGISTRY)
