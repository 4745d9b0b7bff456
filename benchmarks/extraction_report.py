"""End-to-end extraction benchmark: featx extract vs the eager PyTorch pipeline users write.

    python benchmarks/extraction_report.py --output benchmarks/results/extraction-cpu.json

A corpus of 2,000 realistic JPEGs (500x375 / 375x500 crops of real photos, featx.bench.corpus),
ResNet-18 and ResNet-50 (random init, trained-looking BatchNorm statistics, exported with
featx-export). Per model: eager (DataLoader with 2 PIL workers, torchvision transforms, model in
eval/inference_mode, np.save) vs featx extract; model-only featx.Runner vs the onnxruntime Python
API; and, once, decode + preprocess on one core: C++ vs PIL + torchvision.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import featx
from featx.bench.corpus import make_corpus
from featx.bench.eager import eager_extract, pil_preprocess_rate, python_ort_rate
from featx.bench.environment import environment
from featx.bench.extraction import cpp_preprocess_rate, featx_extract_rate, runner_rate
from featx.features import build_feature_model
from featx.models import get_extractor
from featx.models.checkpoint import save_checkpoint
from featx.testing.models import randomize_batchnorm

BATCH = 32


def measure_model(arch: str, paths: list[Path], folder: Path, console: Console) -> dict:
    extractor = get_extractor(arch)
    torch.manual_seed(0)
    model = randomize_batchnorm(extractor.build_model()).eval()
    checkpoint = save_checkpoint(folder / f"{arch}.pt", model, arch)
    onnx_path = featx.export(checkpoint).path
    feature_model, _ = build_feature_model(
        model,
        layer=extractor.layer,
        pool=extractor.pool,
        normalize=False,
        input_size=extractor.preprocess.crop_size,
    )
    with console.status(f"{arch}: eager PyTorch pipeline"):
        eager = eager_extract(
            feature_model, paths, extractor.preprocess, folder / "eager.npy", BATCH, workers=2
        )
    with console.status(f"{arch}: featx extract"):
        featx_rate = featx_extract_rate(onnx_path, paths, folder / f"out-{arch}", BATCH)
    with console.status(f"{arch}: model only"):
        runner = runner_rate(onnx_path, BATCH, repeats=5)
        python_ort = python_ort_rate(onnx_path, BATCH, repeats=5)
    return {
        "model": arch,
        "images": len(paths),
        "batch_size": BATCH,
        "eager_img_s": round(eager.images_per_second, 2),
        "featx_img_s": round(featx_rate, 2),
        "speedup": round(featx_rate / eager.images_per_second, 2),
        "runner_model_only_img_s": round(runner, 2),
        "python_ort_model_only_img_s": round(python_ort, 2),
        "runner_vs_python_ort": round(runner / python_ort, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="JSON file to write")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--corpus", type=Path, help="corpus folder (default: a temporary one)")
    args = parser.parse_args()
    console = Console(width=160)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus or Path(tmp) / "corpus"
        with console.status("corpus"):
            paths = make_corpus(corpus, count=args.images)
        preprocess = get_extractor("resnet50").preprocess
        with console.status("decode + preprocess, one core"):
            preprocess_rows = {
                "cpp_img_s_per_core": round(cpp_preprocess_rate(paths, preprocess, 400), 1),
                "pil_img_s_per_core": round(pil_preprocess_rate(paths, preprocess, 400), 1),
            }
        preprocess_rows["speedup"] = round(
            preprocess_rows["cpp_img_s_per_core"] / preprocess_rows["pil_img_s_per_core"], 2
        )
        rows = [measure_model(arch, paths, Path(tmp), console) for arch in args.models]

    table = Table(title=f"extraction, {args.images} JPEGs ({environment()['device']})")
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    console.print(f"decode + preprocess (256/224 bilinear), one core: {preprocess_rows}")
    if args.output:
        args.output.write_text(
            json.dumps(
                {"environment": environment(), "preprocess": preprocess_rows, "models": rows},
                indent=2,
            )
        )
        console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
