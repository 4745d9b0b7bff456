"""Export every registered extractor and record time, size and parity (issue: featx-export).

    python benchmarks/export_report.py --output benchmarks/results/export-cpu.json

Models are randomly initialised (no downloads) with trained-looking BatchNorm statistics, so the
folding is exercised. Times are wall-clock on this machine: `convert` is torch.onnx alone,
`total` is the whole featx.export call (load, trace, fold, convert, parity, write).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from rich.console import Console

import featx
from featx.bench.report import show_and_write_rows
from featx.models import get_extractor, list_extractors
from featx.models.checkpoint import save_checkpoint
from featx.testing.models import randomize_batchnorm


def export_row(arch: str, folder: Path, fp16: bool) -> dict:
    torch.manual_seed(0)
    model = randomize_batchnorm(get_extractor(arch).build_model())
    checkpoint = save_checkpoint(folder / f"{arch}.pt", model, arch)
    result = featx.export(checkpoint, folder / f"{arch}.onnx", fp16=fp16)
    worst = result.parity.worst()
    return {
        "arch": arch,
        "dtype": result.metadata.dtype,
        "embedding_dim": result.metadata.embedding_dim,
        "bn_folded": len(result.fold.folded),
        "convert_s": round(result.convert_seconds, 2),
        "total_s": round(result.total_seconds, 2),
        "file_mib": round(result.file_bytes / 2**20, 2),
        "max_abs": worst.max_abs,
        "max_rel": worst.max_rel,
        "min_cosine": worst.min_cosine,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="JSON file to write")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--arch", nargs="*", default=None, help="default: every extractor")
    args = parser.parse_args()

    rows = []
    console = Console(width=160)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch or list_extractors():
            with console.status(f"exporting {arch}"):
                rows.append(export_row(arch, Path(tmp), args.fp16))

    show_and_write_rows(console, "featx-export per registered extractor", rows, args.output)


if __name__ == "__main__":
    main()
