"""The PIL decoder for the image files the C++ pipeline leaves to Python (PNG, WebP, CMYK JPEG,
...). The reference preprocessing of the PyTorch side (featx.preprocess) decodes with it too, so
both paths see the same pixels for every file.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from featx.runtime.errors import ImageDecodeError

# Decoded images above this many pixels are refused: PIL's own decompression-bomb error threshold
# (2 * Image.MAX_IMAGE_PIXELS), also the C++ pipeline's default.
MAX_PIXELS = 178_956_970

# Single-channel modes holding more than 8 bits per pixel. PIL's convert("RGB") clips these at
# 255 (a 16-bit PNG turns white); they are scaled to 8 bits instead.
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# What PIL raises on undecodable input: OSError covers unidentified and truncated files,
# SyntaxError/struct.error/ValueError/EOFError come from damaged headers and EXIF blocks.
_PIL_DECODE_ERRORS = (OSError, SyntaxError, struct.error, ValueError, EOFError)


def decode_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decodes an image file to an (H, W, 3) uint8 RGB array, EXIF orientation applied.

    16-bit grayscale is scaled to 8 bits (value / 257, rounded); palette, gray, alpha and CMYK
    images are converted with PIL's ``convert("RGB")`` (alpha dropped, not composited). Raises
    ImageDecodeError for files PIL cannot decode and for images above ``max_pixels`` pixels.
    """
    return _decode(path, str(path), max_pixels)


def decode_rgb_bytes(
    data: bytes | memoryview, name: str, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """`decode_rgb` of an encoded image held in memory (a tar member, a parquet value, a file
    the C++ pipeline read), which messages call ``name``."""
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source: str | Path | io.BytesIO, path: str, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"{path}: image is {width}x{height} = {width * height} pixels, above the "
                    f"limit of {max_pixels} pixels (max_pixels)"
                )
            return _rgb_array(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"{path}: {err}") from err
    except _PIL_DECODE_ERRORS as err:
        raise ImageDecodeError(f"{path}: {err}") from err


def _rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in _WIDE_GRAY_MODES:
        wide = np.asarray(image).astype(np.float64)
        gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def open_rgb(path: str | Path) -> Image.Image:
    """Decodes an image file to an RGB PIL image, as `decode_rgb` does."""
    return Image.fromarray(decode_rgb(path))
