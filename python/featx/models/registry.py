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


@dataclass(frozen=True)
class Extractor:
    """A model architecture plus its curated feature-extraction defaults."""

    name: str
    build: Callable[[int | None], nn.Module]
    layer: str | None
    pool: str
    preprocess: Preprocess
    feature_info: FeatureInfo | None
    description: str = ""
    curated: bool = True

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
