"""The extractor registry: which layer, pooling and preprocessing make a model an extractor.

Curated entries are registered with ``@register_extractor``. Any other torchvision
classification model is accepted too, with generic defaults (see ``torchvision_models``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from featx.errors import FeatxError
from featx.metadata import Preprocess

POOLINGS = ("avg", "max", "gem", "cls", "none")


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


def list_extractors() -> list[str]:
    """Names of the curated extractors, sorted."""
    return sorted(_REGISTRY)


def get_extractor(name: str) -> Extractor:
    """The curated extractor ``name``, else generic defaults for a torchvision model ``name``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    from featx.models.torchvision_models import generic_torchvision_extractor, torchvision_names

    if name in torchvision_names():
        return generic_torchvision_extractor(name)
    known = list(_REGISTRY) + torchvision_names()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise FeatxError(
        f"unknown architecture {name!r}: it is neither a featx extractor nor a torchvision "
        f"classification model.{hint} `featx models` lists the curated extractors; any name "
        "from torchvision.models.list_models() also works."
    )
