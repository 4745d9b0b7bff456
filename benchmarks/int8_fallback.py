"""Which multiply-add ops featx-export --int8's fallback keeps fp32 first, measured: rankings of
the quantizable ops tried at the fallback's own counts (featx.quantization.fallback_counts) on the
same calibration, fp32 export and held-out photos, with the gate's figures and int8 vs fp32
model-only speed (batch 8, timed alternately). ViT-B/16 and ResNet-50, randomly initialised with
random BatchNorm statistics, as in benchmarks/int8_report.py.

    python benchmarks/int8_fallback.py --output benchmarks/results/int8-fallback-cpu.json

Rankings (first kept fp32 first):
- per_value (featx's): lowest signal to quantization noise (dB) of the op's activation input,
  plus 10 log10 of the values the op reads and writes (what converting them costs);
- per_multiply_add: the same, plus 10 log10 of its multiply-adds instead;
- input_sqnr: the same without a cost term;
- model_error: lowest signal to noise of the op's output in the int8 model against the fp32
  model's (where the error has accumulated to);
- last_first: the model's last ops first.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import onnx
from rich.console import Console

import featx
from featx.bench.corpus import rows_over_photos
from featx.bench.report import show_and_write_rows
from featx.quantization import (
    DIAGNOSED_IMAGES,
    MAX_FP32_SHARE,
    Int8Gate,
    Int8Quantizer,
    alternating_speeds,
    embed,
    embed_file,
    embedding_fidelity,
    fallback_counts,
    recipe_for,
    split_images,
)
from featx.runtime.inputs import read_inputs
from featx.runtime.instruction_set import cpu_instruction_set
from featx.runtime.ort_config import cpu_session
from featx.testing.models import random_batchnorm_checkpoint

ARCHS = ("vit_b_16", "resnet50")
PHOTOS = 384
Errors = dict[str, dict[str, float]]


def multiply_adds(quantizer: Int8Quantizer, node: onnx.NodeProto) -> float:
    """Per image: the weight's size times the output positions it is applied at."""
    weight = quantizer.shapes.get(node.input[1], [])
    output = quantizer.shapes.get(node.output[0], [])
    if not weight or len(output) < 2:
        return 1.0
    channels = output[1] if node.op_type == "Conv" else output[-1]
    return math.prod(weight) * math.prod(output[1:]) / max(channels, 1)


def model_error(quantizer: Int8Quantizer, errors: Errors) -> list[str]:
    scored = [
        (errors.get(node.output[0], {}).get("xmodel_err", math.inf), node.name)
        for node in quantizer.candidates
    ]
    return [name for _, name in sorted(scored)]


def last_first(quantizer: Int8Quantizer, errors: Errors) -> list[str]:
    return [node.name for node in reversed(quantizer.candidates)]


RANKINGS: dict[str, Callable[[Int8Quantizer, Errors], list[str]]] = {
    "per_value": lambda quantizer, errors: quantizer.fallback_ranking(errors),
    "per_multiply_add": lambda quantizer, errors: quantizer.ranking_by_input_sqnr(
        errors, lambda node: multiply_adds(quantizer, node)
    ),
    "input_sqnr": lambda quantizer, errors: quantizer.ranking_by_input_sqnr(
        errors, lambda node: 1.0
    ),
    "model_error": model_error,
    "last_first": last_first,
}


def fallback_rows(arch: str, folder: Path, photos: Path, console: Console) -> list[dict]:
    checkpoint = random_batchnorm_checkpoint(arch, folder / f"{arch}.pt")
    fp32 = featx.export(checkpoint, folder / "fp32.onnx")
    proto = onnx.load(str(fp32.path))
    calibration, held_out, _ = split_images(
        read_inputs(photos), None, fp32.metadata.preprocess, 128, 256, 0
    )
    work = folder / arch
    work.mkdir()
    quantizer = Int8Quantizer(proto, recipe_for(cpu_instruction_set()), calibration, work)
    fp32_session = cpu_session(proto.SerializeToString(), "float32")
    reference = embed(fp32_session, held_out)
    all_int8 = quantizer.quantize([])
    errors = quantizer.tensor_errors(all_int8, held_out[:DIAGNOSED_IMAGES])
    gate = Int8Gate()
    rows = []

    def measure(ranking: str, fp32_nodes: list[str], path: Path) -> None:
        figures = embedding_fidelity(reference, embed_file(path, held_out))
        int8_session = cpu_session(path.read_bytes(), "int8")
        fp32_rate, int8_rate = alternating_speeds(fp32_session, int8_session, held_out[:8])
        rows.append(
            {
                "arch": arch,
                "ranking": ranking,
                "fp32_nodes": len(fp32_nodes),
                "quantizable_nodes": len(quantizer.candidates),
                "min_cosine": round(figures.min_cosine, 6),
                "mean_cosine": round(figures.mean_cosine, 6),
                "recall_at_10": round(figures.recall_at_10, 4),
                "default_gate": "; ".join(gate.failures(figures)) or "passed",
                "int8_vs_fp32": round(int8_rate / fp32_rate, 3),
            }
        )
        console.print(rows[-1])

    measure("-", [], all_int8)
    for name, rank in RANKINGS.items():
        order = rank(quantizer, errors)
        for count in fallback_counts(len(quantizer.candidates), MAX_FP32_SHARE):
            measure(name, order[:count], quantizer.quantize(order[:count]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="JSON file to write")
    parser.add_argument("--arch", nargs="*", default=list(ARCHS))
    args = parser.parse_args()

    console = Console(width=200)
    rows = rows_over_photos(
        args.arch,
        lambda arch, folder, photos: fallback_rows(arch, folder, photos, console),
        console,
        "fallback rankings",
        PHOTOS,
    )
    show_and_write_rows(console, "int8 fallback: which ops to keep fp32 first", rows, args.output)


if __name__ == "__main__":
    main()
