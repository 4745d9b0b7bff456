"""Model loading: the extractor registry, curated torchvision backbones and the seed models."""

from featx.models import seeds, torchvision_models
from featx.models.registry import (
    POOLINGS,
    Extractor,
    FeatureInfo,
    get_extractor,
    list_extractors,
    register_extractor,
)

__all__ = [
    "POOLINGS",
    "Extractor",
    "FeatureInfo",
    "get_extractor",
    "list_extractors",
    "register_extractor",
    "seeds",
    "torchvision_models",
]
