"""Which int8 recipe featx-export --int8 uses by default, measured: variants of the default
recipe (one setting changed at a time) on the same fp32 export, calibration and held-out photos,
with the fidelity gate's figures and int8 vs fp32 model-only speed (batch 8, timed alternately);
ResNet-50 for the CNN settings, ViT-B/16 for attention's.

    python benchmarks/int8_recipes.py --output benchmarks/results/int8-recipes-cpu.json

The instruction set of the machine is in every row (featx.runtime.instruction_set):
the reduce_range row is what a machine of the other kind would default to.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import onnx
from rich.console import Console

import featx
from featx.bench.corpus import rows_over_photos
from featx.bench.report import show_and_write_rows
from featx.quantization import Int8Gate, quantize_int8, recipe_for
from featx.runtime.inputs import read_inputs
from featx.runtime.instruction_set import cpu_instruction_set
from featx.testing.models import random_batchnorm_checkpoint

VARIANTS = {
    "default": {},
    "reduce_range": {"reduce_range": True},
    "per_tensor": {"per_channel": False},
    "percentile": {"calibration": "percentile"},
    "int8_activations": {"activations": "int8"},
    "activation_matmuls": {"activation_matmuls": True},
}
VARIANTS_OF = {
    "resnet50": ("default", "reduce_range", "per_tensor", "percentile", "int8_activations"),
    # Not percentile: its histograms keep every activation of every calibration batch, which for
    # ViT-B/16 ran out of the build machine's 24 GB.
    "vit_b_16": ("default", "activation_matmuls", "reduce_range"),
}
PHOTOS = 384
NO_GATE = Int8Gate(mean_cosine=0.0, min_cosine=-1.0, recall_at_10=0.0)
"""Every variant's model is measured; the rows are judged by the default gate here."""


def recipe_rows(arch: str, folder: Path, photos: Path, console: Console) -> list[dict]:
    checkpoint = random_batchnorm_checkpoint(arch, folder / f"{arch}.pt")
    fp32 = featx.export(checkpoint, folder / f"{arch}.onnx")
    proto = onnx.load(str(fp32.path))
    images = read_inputs(photos)
    default = recipe_for(cpu_instruction_set())
    rows = []
    for name in VARIANTS_OF[arch]:
        recipe = dataclasses.replace(default, **VARIANTS[name])
        _, report = quantize_int8(
            proto, fp32.metadata.preprocess, images, str(photos), recipe=recipe, gate=NO_GATE
        )
        failures = Int8Gate().failures(report.figures)
        rows.append(
            {
                "arch": arch,
                "variant": name,
                "instruction_set": recipe.instruction_set,
                "min_cosine": round(report.figures.min_cosine, 6),
                "mean_cosine": round(report.figures.mean_cosine, 6),
                "recall_at_10": round(report.figures.recall_at_10, 4),
                "pairwise_cosine": round(report.figures.reference_pairwise_cosine, 6),
                "default_gate": "; ".join(failures) or "passed",
                "fp32_img_s": round(report.fp32_images_per_second, 2),
                "int8_img_s": round(report.int8_images_per_second, 2),
                "int8_vs_fp32": round(report.speedup, 3),
            }
        )
        console.print(rows[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="JSON file to write")
    parser.add_argument("--arch", nargs="*", default=list(VARIANTS_OF), choices=list(VARIANTS_OF))
    args = parser.parse_args()

    console = Console(width=200)
    rows = rows_over_photos(
        args.arch,
        lambda arch, folder, photos: recipe_rows(arch, folder, photos, console),
        console,
        "recipes",
        PHOTOS,
    )
    show_and_write_rows(console, "int8 recipes (one setting changed at a time)", rows, args.output)


if __name__ == "__main__":
    main()
