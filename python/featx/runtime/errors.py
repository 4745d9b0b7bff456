"""Errors featx reports to users. The CLI prints the message and exits with ``exit_code``."""

from __future__ import annotations


class FeatxError(Exception):
    """Bad input: the message says what was wrong and what to do. Nothing was written."""

    exit_code = 2


class ParityError(FeatxError):
    """The exported model's outputs left the parity gate; the figures are in the message."""

    exit_code = 1


class OutputWriteError(FeatxError):
    """A file featx writes could not be written: the disk is full, the quota used up, the file
    system read-only, or permission denied. What was finished before is kept."""

    exit_code = 74
    """EX_IOERR of sysexits.h: distinct from bad input (2), so a job runner can tell the two."""

    def __init__(self, message: str, *, full: bool):
        super().__init__(message)
        self.full = full
        """Whether space ran out (disk or quota), rather than permission to write."""


class ImageDecodeError(FeatxError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, too large)."""


class MissingExtraError(FeatxError, ImportError):
    """A part of featx whose optional dependencies are not installed; the message names the
    extra that installs them."""


ONNXRUNTIME_EXTRAS = "'featx[cpu]' (onnxruntime) or 'featx[gpu]' (onnxruntime-gpu, CUDA)"
"""Exactly one of the two: both packages install into the same onnxruntime/ folder."""
TORCH_EXTRA = "'featx[torch]'"
EXTRA_OF_MODULE = {
    "onnxruntime": ONNXRUNTIME_EXTRAS,
    "ray": "'featx[ray]'",
    **dict.fromkeys(("timm", "safetensors"), "'featx[timm]'"),
    **dict.fromkeys(
        ("torch", "torchvision", "triton", "onnx", "onnxscript", "sklearn", "matplotlib"),
        TORCH_EXTRA,
    ),
}
"""Top-level modules of the optional dependencies, and the extra that installs each."""


def missing_extra(err: ModuleNotFoundError, needed_for: str) -> MissingExtraError | None:
    """The user-facing error for ``err`` when it is an optional dependency that is not installed
    (None for any other missing module, which is a bug to surface as it is)."""
    module = (err.name or "").partition(".")[0]
    if module not in EXTRA_OF_MODULE:
        return None
    return MissingExtraError(
        f"{needed_for} needs {module}, which is not installed: pip install "
        f"{EXTRA_OF_MODULE[module]}"
    )
