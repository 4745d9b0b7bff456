"""Errors featx reports to users. The CLI prints the message and exits with ``exit_code``."""

from __future__ import annotations


class FeatxError(Exception):
    """Bad input: the message says what was wrong and what to do. Nothing was written."""

    exit_code = 2


class ParityError(FeatxError):
    """The exported model's outputs left the parity gate; the figures are in the message."""

    exit_code = 1


class ImageDecodeError(FeatxError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, too large)."""
