"""Export timm architectures with --arch timm:NAME and record what issue 12 asks per arch.

    python benchmarks/timm_report.py --output benchmarks/results/timm-cpu.json

Models are randomly initialised (no downloads) with trained-looking BatchNorm statistics. For
fp32 and --fp16: the embedding dim, featx.export's wall seconds (load, trace, fold, convert,
parity, write), the file size, and min cosine / max-abs/scale of ONNX Runtime's embedding
against timm's own ``num_classes=0`` model on random inputs and on real photos through
timm's eval transform. ``preprocess`` is the
largest difference (normalised units) between featx's C++ pipeline and timm's eval transform
(timm.data.create_transform of the resolved pretrained_cfg) over featx's parity photos.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from rich.console import Console

import featx
from featx import _runner
from featx.bench.report import show_and_write_rows
from featx.models import get_extractor
from featx.runtime.pipeline import spec_dict
from featx.testing.images import parity_photos
from featx.testing.models import TIMM_ARCHS, randomize_batchnorm


def figures(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    expected, actual = expected.astype(np.float64), actual.astype(np.float64)
    cosine = (expected * actual).sum(1) / (
        np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    )
    return float(cosine.min()), float(np.abs(expected - actual).max() / np.abs(expected).max())


def preprocess_difference(arch: str) -> float:
    config = timm.data.resolve_data_config(
        pretrained_cfg=timm.models.get_pretrained_cfg(arch).to_dict()
    )
    transform = timm.data.create_transform(**config)
    spec = spec_dict(get_extractor(f"timm:{arch}").preprocess)
    return max(
        float(np.abs(_runner.preprocess_rgb(np.asarray(p), spec) - transform(p).numpy()).max())
        for p in parity_photos().values()
    )


def export_row(arch: str, folder: Path, fp16: bool) -> dict:
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model(arch, pretrained=False)).eval()
    oracle = timm.create_model(arch, pretrained=False, num_classes=0).eval()
    oracle.load_state_dict(model.state_dict(), strict=False)
    weights = folder / f"{arch}.pt"
    torch.save(model.state_dict(), weights)
    result = featx.export(weights, folder / f"{arch}.onnx", arch=f"timm:{arch}", fp16=fp16)
    size = result.metadata.preprocess.crop_size
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    photos = torch.stack([transform(p) for p in parity_photos().values()])
    images = torch.cat(
        [torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7)), photos]
    )
    with torch.no_grad():
        expected = oracle(images).numpy()
    min_cosine, max_rel = figures(expected, featx.Runner(result.path).run(images.numpy()))
    return {
        "arch": arch,
        "kind": TIMM_ARCHS[arch],
        "dtype": result.metadata.dtype,
        "embedding_dim": result.metadata.embedding_dim,
        "input": size,
        "reparameterized": len(result.fold.reparameterized),
        "bn_folded": len(result.fold.folded),
        "export_s": round(result.total_seconds, 1),
        "file_mib": round(result.file_bytes / 2**20, 1),
        "min_cosine": min_cosine,
        "max_rel": max_rel,
        "rows": len(images),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="JSON file to write")
    parser.add_argument("--arch", nargs="*", default=None, help="default: featx's checked set")
    args = parser.parse_args()

    rows = []
    console = Console(width=180)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch or list(TIMM_ARCHS):
            for fp16 in (False, True):
                with console.status(f"exporting {arch} {'fp16' if fp16 else 'fp32'}"):
                    row = export_row(arch, Path(tmp), fp16)
                row["preprocess_max_diff"] = preprocess_difference(arch)
                rows.append(row)
                console.print(row)

    show_and_write_rows(
        console, "featx-export --arch timm:NAME vs timm's num_classes=0 model", rows, args.output
    )


if __name__ == "__main__":
    main()
