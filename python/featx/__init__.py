"""featx: verified ONNX export and high-throughput feature extraction for PyTorch models.

Two layers: featx.runtime runs exported .onnx files over images (no torch anywhere on its import
path); the PyTorch side above it (models, fold, fuse, export, train, eval, bench) makes those
files. The names below are imported on first use, so ``import featx`` costs nothing and a
runtime-only install uses ``featx.extract`` and ``featx.Runner`` without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from featx._version import __version__

_EXPORTS = {
    "EvalResult": "featx.evaluation",
    "evaluate": "featx.evaluation",
    "ExportResult": "featx.exporter",
    "export": "featx.exporter",
    "ExtractSummary": "featx.runtime.extract",
    "extract": "featx.runtime.extract",
    "FeatxError": "featx.runtime.errors",
    "MissingExtraError": "featx.runtime.errors",
    "ParityError": "featx.runtime.errors",
    "FuseReport": "featx.fusion",
    "fuse": "featx.fusion",
    "ModelMetadata": "featx.runtime.metadata",
    "Preprocess": "featx.runtime.metadata",
    "read_metadata": "featx.runtime.metadata",
    "get_extractor": "featx.models",
    "list_extractors": "featx.models",
    "register_extractor": "featx.models",
    "Runner": "featx.runtime.runner",
    "TorchRunner": "featx.torch_runner",
    "TrainResult": "featx.training",
    "train": "featx.training",
}
"""Public name -> the module defining it."""

__all__ = [
    "EvalResult",
    "ExportResult",
    "ExtractSummary",
    "FeatxError",
    "FuseReport",
    "MissingExtraError",
    "ModelMetadata",
    "ParityError",
    "Preprocess",
    "Runner",
    "TorchRunner",
    "TrainResult",
    "__version__",
    "evaluate",
    "export",
    "extract",
    "fuse",
    "get_extractor",
    "list_extractors",
    "read_metadata",
    "register_extractor",
    "train",
]

if TYPE_CHECKING:
    from featx.evaluation import EvalResult, evaluate
    from featx.exporter import ExportResult, export
    from featx.fusion import FuseReport, fuse
    from featx.models import get_extractor, list_extractors, register_extractor
    from featx.runtime.errors import FeatxError, MissingExtraError, ParityError
    from featx.runtime.extract import ExtractSummary, extract
    from featx.runtime.metadata import ModelMetadata, Preprocess, read_metadata
    from featx.runtime.runner import Runner
    from featx.torch_runner import TorchRunner
    from featx.training import TrainResult, train


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'featx' has no attribute {name!r}")
    from featx.runtime.errors import missing_extra

    try:
        module = importlib.import_module(_EXPORTS[name])
    except ModuleNotFoundError as err:
        extra = missing_extra(err, f"featx.{name}")
        if extra is None:
            raise
        raise extra from err
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
