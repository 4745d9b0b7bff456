"""scikit-learn's handwritten digits (1,797 real 8x8 scans) written out as image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

DIGIT_LEVELS = 16  # the scans hold grey levels 0..16
JPEG_QUALITY = 95  # for .jpg output; other formats ignore it


def write_digits(out_dir: str | Path, image_size: int = 32, suffix: str = ".jpg") -> list[Path]:
    """Writes every digit as an RGB image in ImageFolder layout (``out_dir/<label>/<index>``).

    Files already present are kept, so a second call costs only a directory scan.
    """
    out = Path(out_dir)
    digits = load_digits()
    paths = []
    for index, (scan, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = out / str(label) / f"{index:04d}{suffix}"
        paths.append(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        grey = np.round(scan / DIGIT_LEVELS * 255).astype(np.uint8)
        image = Image.fromarray(grey).resize((image_size, image_size), Image.Resampling.BILINEAR)
        image.convert("RGB").save(path, quality=JPEG_QUALITY)
    return paths


def label_of(path: Path) -> int:
    """The class of an image written by write_digits (its folder name)."""
    return int(path.parent.name)
