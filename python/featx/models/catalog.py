"""Looking up an architecture by name: ``timm:NAME`` for timm models (featx.models.timm_models),
the curated extractors, then any torchvision classification model with generic defaults
(featx.models.torchvision_models)."""

from __future__ import annotations

import difflib

from featx.models import seeds, timm_models, torchvision_models
from featx.models.registry import Extractor, curated, curated_names
from featx.runtime.errors import FeatxError

REGISTERING_MODULES = (seeds, torchvision_models)
"""Imported for their ``@register_extractor`` entries: the registry is complete once they ran."""


def list_extractors() -> list[str]:
    """Names of the curated extractors, sorted."""
    return curated_names()


def get_extractor(name: str) -> Extractor:
    """The curated extractor ``name``, else timm's ``timm:NAME``, else generic defaults for a
    torchvision model ``name``."""
    if name.startswith(timm_models.TIMM_PREFIX):
        return timm_models.timm_extractor(name)
    extractor = curated(name)
    if extractor is not None:
        return extractor
    if name in torchvision_models.torchvision_names():
        return torchvision_models.generic_torchvision_extractor(name)
    known = curated_names() + torchvision_models.torchvision_names()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise FeatxError(
        f"unknown architecture {name!r}: it is neither a featx extractor nor a torchvision "
        f"classification model.{hint} `featx models` lists the curated extractors; any name "
        "from torchvision.models.list_models() also works, and timm:NAME any timm model."
    )
