"""A folder of realistic, varied JPEGs for throughput benchmarks, made from real photographs.

Every pixel comes from photographs that ship inside installed packages, so nothing is downloaded:

- scikit-learn's ``load_sample_images()``: ``china.jpg`` (a temple) and ``flower.jpg``, both
  640x427 RGB, in ``sklearn/datasets/images/``;
- where scikit-image is installed, the colour photographs named in ``SKIMAGE_PHOTOS`` that its
  wheel bundles under ``skimage/data/``, read from the files directly: ``skimage.data``'s own
  loaders may download, these never do. A name whose file is absent is skipped; the corpus
  manifest (``.featx-corpus.json`` in the folder) lists the sources actually used.

Each corpus image is a random crop of one of them (area 30-100% of the source, aspect near the
target's), possibly mirrored, with mild brightness, contrast, saturation and white-balance jitter,
resized to the target size (about a third portrait) and encoded as JPEG near ``quality``. Crops of
real scenes keep the JPEG entropy decoding and resizing work realistic, which flat synthetic
images would understate.
"""

from __future__ import annotations

import importlib.util
import json
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from rich.console import Console
from sklearn.datasets import load_sample_images

# Astronaut Eileen Collins, Chelsea the cat, a cup of coffee, a SpaceX rocket, a motorcycle (left
# view of a stereo pair), the Hubble deep field, an immunohistochemistry micrograph.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "ihc.png",
)
MIN_AREA_FRACTION = 0.3
PORTRAIT_FRACTION = 1 / 3
MAX_LOG_ASPECT_JITTER = math.log(1.15)
"""Crop aspect = target aspect x up to 15% either way, so the resize distorts only mildly."""
BRIGHTNESS, CONTRAST, SATURATION, WHITE_BALANCE = 0.15, 0.10, 0.20, 0.06
"""Jitter half-ranges: each factor is drawn uniformly from 1 +- this."""
QUALITY_SPREAD = 5
MANIFEST = ".featx-corpus.json"
"""Hidden, so tools that list the folder's images do not trip on it."""


@dataclass(frozen=True)
class SourcePhoto:
    name: str
    image: Image.Image


def source_photos() -> list[SourcePhoto]:
    """The photographs the corpus is cut from (see the module docstring), in a fixed order."""
    bundle = load_sample_images()
    sources = [
        SourcePhoto(f"sklearn/{Path(file).name}", Image.fromarray(array))
        for file, array in zip(bundle.filenames, bundle.images, strict=True)
    ]
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.submodule_search_locations:
        data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
        for name in SKIMAGE_PHOTOS:
            if (data_dir / name).is_file():
                with Image.open(data_dir / name) as image:
                    sources.append(SourcePhoto(f"skimage/{name}", image.convert("RGB")))
    return sources


def make_corpus(
    folder: str | Path,
    count: int = 2000,
    size: tuple[int, int] = (500, 375),
    seed: int = 0,
    quality: int = 90,
) -> list[Path]:
    """Writes ``count`` JPEGs ``img-00000.jpg``... to ``folder`` and returns their paths in order.

    ``size`` is (width, height) of the landscape images; portrait ones are (height, width).
    Deterministic: the same arguments and source photos give the same bytes. Idempotent: a folder
    whose manifest records the same arguments and sources and holds all ``count`` files is reused
    as is; otherwise every image is rewritten and stale ``img-*.jpg`` beyond ``count`` removed.
    """
    folder = Path(folder)
    paths = [folder / f"img-{index:05d}.jpg" for index in range(count)]
    sources = source_photos()
    manifest = {
        "count": count,
        "size": list(size),
        "seed": seed,
        "quality": quality,
        "sources": [source.name for source in sources],
    }
    manifest_path = folder / MANIFEST
    if (
        manifest_path.is_file()
        and json.loads(manifest_path.read_text()) == manifest
        and all(path.is_file() for path in paths)
        and len(list(folder.glob("img-*.jpg"))) == count
    ):
        return paths

    folder.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    for stale in set(folder.glob("img-*.jpg")) - set(paths):
        stale.unlink()
    for index, path in enumerate(paths):
        rng = np.random.default_rng([seed, index])
        image, image_quality = _corpus_image(sources, rng, size, quality)
        image.save(path, format="JPEG", quality=image_quality)
    # Written last: an interrupted run leaves no manifest, so the next call redoes the folder.
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return paths


def _corpus_image(
    sources: list[SourcePhoto], rng: np.random.Generator, size: tuple[int, int], quality: int
) -> tuple[Image.Image, int]:
    width, height = size
    if rng.random() < PORTRAIT_FRACTION:
        width, height = height, width
    source = sources[int(rng.integers(len(sources)))].image

    area = rng.uniform(MIN_AREA_FRACTION, 1.0) * source.width * source.height
    aspect = width / height * math.exp(rng.uniform(-MAX_LOG_ASPECT_JITTER, MAX_LOG_ASPECT_JITTER))
    crop_width, crop_height = math.sqrt(area * aspect), math.sqrt(area / aspect)
    # A portrait crop of a landscape photo cannot reach the full area: shrink, keeping the aspect.
    shrink = min(1.0, source.width / crop_width, source.height / crop_height)
    crop_width = min(source.width, crop_width * shrink)
    crop_height = min(source.height, crop_height * shrink)
    left = rng.uniform(0, source.width - crop_width)
    top = rng.uniform(0, source.height - crop_height)
    box = (left, top, left + crop_width, top + crop_height)
    image = source.resize((width, height), Image.Resampling.BICUBIC, box=box)

    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - CONTRAST, 1 + CONTRAST))
    image = ImageEnhance.Color(image).enhance(rng.uniform(1 - SATURATION, 1 + SATURATION))
    gains = rng.uniform(1 - WHITE_BALANCE, 1 + WHITE_BALANCE, size=3)
    lookup = [min(255, round(level * gain)) for gain in gains for level in range(256)]
    image = image.point(lookup)

    spread = int(rng.integers(-QUALITY_SPREAD, QUALITY_SPREAD + 1))
    return image, int(np.clip(quality + spread, 1, 100))


def rows_over_photos(
    archs: Sequence[str],
    rows_of: Callable[[str, Path, Path], list[dict]],
    console: Console,
    what: str,
    count: int,
) -> list[dict]:
    """``rows_of(arch, folder, photos)`` for each of ``archs``, all in one temporary ``folder``
    holding a corpus of ``count`` photo crops (``photos``), under a status line saying
    ``what`` is being measured."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        make_corpus(photos, count=count)
        for arch in archs:
            with console.status(f"{arch}: {what}"):
                rows += rows_of(arch, Path(tmp), photos)
    return rows
