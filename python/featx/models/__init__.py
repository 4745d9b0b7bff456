"""Model loading: the extractor registry, curated torchvision backbones and the seed models."""

from featx.models.catalog import get_extractor, list_extractors
from featx.models.registry import Extractor, FeatureInfo, register_extractor
from featx.runtime.metadata import POOLINGS

__all__ = [
    "POOLINGS",
    "Extractor",
    "FeatureInfo",
    "get_extractor",
    "list_extractors",
    "register_extractor",
]
