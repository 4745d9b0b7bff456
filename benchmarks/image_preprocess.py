"""Single-thread decode + preprocess throughput: the C++ image pipeline vs PIL + torchvision.

    python benchmarks/image_preprocess.py --output benchmarks/results/image-preprocess-cpu.json

Inputs are 500x375 crops of the scikit-learn sample photos saved as JPEG quality 90 (4:2:0), the
size of a typical web photo; preprocessing is resize 256 / crop 224. Each row times one pass over
all files, repeated; the figures are per image (median, p20, p80) and images/s at the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from rich.console import Console
from rich.table import Table

from export_report import environment
from featx import _runner
from featx.data.photos import sample_photos
from featx.metadata import Preprocess
from featx.preprocess import decode_rgb, open_rgb, reference_transform, spec_dict
from featx.testing.images import jpeg_bytes

CROP_SIZE = (500, 375)


def write_inputs(folder: Path, count: int) -> list[Path]:
    sources = sample_photos()
    paths = []
    for i in range(count):
        image = sources[i % 2]
        left = (i * 17) % (image.width - CROP_SIZE[0])
        top = (i * 7) % (image.height - CROP_SIZE[1])
        crop = image.crop((left, top, left + CROP_SIZE[0], top + CROP_SIZE[1]))
        path = folder / f"photo-{i}.jpg"
        path.write_bytes(jpeg_bytes(crop, quality=90))
        paths.append(path)
    return paths


def per_image_seconds(work: Callable[[object], object], items: list, repeats: int) -> list[float]:
    for item in items:  # warm-up: thread-local buffers, lazy imports
        work(item)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            work(item)
        times.append((time.perf_counter() - start) / len(items))
    return times


def row(name: str, times: list[float], baseline: float | None) -> dict:
    quantiles = statistics.quantiles(times, n=5)
    median = statistics.median(times)
    return {
        "path": name,
        "median_ms": round(median * 1e3, 3),
        "p20_ms": round(quantiles[0] * 1e3, 3),
        "p80_ms": round(quantiles[3] * 1e3, 3),
        "images_per_s": round(1 / median, 1),
        "speedup": round(baseline / median, 2) if baseline else 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="JSON file to write")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--interpolation", default="bilinear")
    args = parser.parse_args()
    torch.set_num_threads(1)  # single thread on both sides

    preprocess = Preprocess(224, 256, args.interpolation)
    spec = spec_dict(preprocess)
    transform = reference_transform(preprocess)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_inputs(Path(tmp), args.images)
        decoded = [decode_rgb(path) for path in paths]
        for path in paths:  # the two paths agree before their speed means anything
            status, _, tensor = _runner.preprocess_file(str(path), spec)
            assert status == "ok"
            assert np.array_equal(tensor, transform(open_rgb(path)).numpy())
        by_hand = per_image_seconds(
            lambda path: transform(ImageOps.exif_transpose(Image.open(path)).convert("RGB")),
            paths,
            args.repeats,
        )
        reference = per_image_seconds(lambda path: transform(open_rgb(path)), paths, args.repeats)
        native = per_image_seconds(
            lambda path: _runner.preprocess_file(str(path), spec), paths, args.repeats
        )
        resize_only = per_image_seconds(
            lambda rgb: _runner.preprocess_rgb(rgb, spec), decoded, args.repeats
        )
    baseline = statistics.median(by_hand)
    rows = [
        row("PIL + torchvision (Image.open, exif_transpose, convert)", by_hand, None),
        row("PIL + torchvision (featx open_rgb + reference_transform)", reference, baseline),
        row("C++ preprocess_file (decode + preprocess)", native, baseline),
        row("C++ preprocess_rgb (resize + crop + normalise only)", resize_only, baseline),
    ]

    console = Console(width=160)
    table = Table(
        title=f"{args.images} JPEGs {CROP_SIZE[0]}x{CROP_SIZE[1]} q90 -> 224 (resize 256, "
        f"{args.interpolation}), one thread"
    )
    for column in rows[0]:
        table.add_column(column, justify="right")
    for values in rows:
        table.add_row(*(str(v) for v in values.values()))
    console.print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "images": args.images,
            "size": list(CROP_SIZE),
            "quality": 90,
            "preprocess": preprocess.to_dict(),
            "repeats": args.repeats,
        }
        result = {"environment": environment(), "config": config, "rows": rows}
        args.output.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
