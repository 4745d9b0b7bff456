"""featx: verified ONNX export and high-throughput feature extraction for PyTorch models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("featx")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"

from featx.errors import FeatxError, ParityError
from featx.evaluate import EvalResult, evaluate
from featx.export import ExportResult, export
from featx.extract import ExtractSummary, extract
from featx.fuse import FuseReport, fuse
from featx.metadata import ModelMetadata, Preprocess, read_metadata
from featx.models import get_extractor, list_extractors, register_extractor
from featx.runner import Runner
from featx.train import TrainResult, train

__all__ = [
    "EvalResult",
    "ExportResult",
    "ExtractSummary",
    "FeatxError",
    "FuseReport",
    "ModelMetadata",
    "ParityError",
    "Preprocess",
    "Runner",
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
