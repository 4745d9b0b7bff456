"""featx-export --int8 per curated extractor: export time and size, the fidelity gate's figures
on held-out photos, and model-only speed of the int8 file against the fp32 one (issue 15).

    python benchmarks/int8_report.py --output benchmarks/results/int8-cpu.json

The curated models are randomly initialised with trained-looking BatchNorm statistics (no
downloads); small_cnn also trained on scikit-learn's digits (as `featx demo` trains it) and gated
on digits, beside itself at random init. Both files of a row come from the same checkpoint; int8
is calibrated on featx-export's default 128 images and gated on the next 256 (real-photo crops,
featx.bench.corpus, or digits), with the default fallback (up to half the multiply-add ops kept
fp32; fp32_ops says how many were, the all_int8 columns what the all-int8 model measured).
Model-only speed: featx.Runner on one seeded batch, the fp32 and int8 files timed alternately in
the same process (the machine is noisy; a ratio measured side by side is what holds), median of
--repeats. An arch whose int8 model fails its gate is a row saying so, with the figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

import featx
from featx.bench.corpus import make_corpus
from featx.bench.report import show_and_write_rows
from featx.data.digits import write_digits
from featx.quantization import Int8GateError
from featx.testing.models import random_batchnorm_checkpoint
from featx.training import train

ARCHS = ("resnet18", "resnet50", "vgg16", "mobilenet_v3_large", "efficientnet_b0", "vit_b_16")
PHOTOS = 384


def model_only_rates(fp32: Path, int8: Path, batch: int, repeats: int) -> tuple[float, float]:
    runners = [featx.Runner(fp32), featx.Runner(int8)]
    shape = runners[0].metadata.preprocess.input_shape
    images = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    times: list[list[float]] = [[], []]
    for runner in runners:
        runner.run(images)
    for _ in range(repeats):
        for index, runner in enumerate(runners):
            started = time.perf_counter()
            runner.run(images)
            times[index].append(time.perf_counter() - started)
    return batch / statistics.median(times[0]), batch / statistics.median(times[1])


def int8_row(
    arch: str, checkpoint: Path, folder: Path, images: Path, batch: int, repeats: int
) -> dict:
    """One arch's fp32 and int8 exports from ``checkpoint``, calibrated and gated on ``images``.
    An int8 model outside its gate is not written; its row has the gate's figures and the speeds
    the export measured (batch 8) instead of --batch-size ones."""
    fp32 = featx.export(checkpoint, folder / f"{checkpoint.stem}.onnx")
    row: dict = {
        "arch": arch,
        "fp32_export_s": round(fp32.total_seconds, 1),
        "fp32_mib": round(fp32.file_bytes / 2**20, 1),
    }
    started = time.perf_counter()
    try:
        int8 = featx.export(
            checkpoint, folder / f"{checkpoint.stem}-int8.onnx", int8=True, calibrate=images
        )
    except Int8GateError as err:
        report, int8_mib, gate = err.report, None, "failed"
        fp32_rate, int8_rate = report.fp32_images_per_second, report.int8_images_per_second
        export_s = time.perf_counter() - started
    else:
        report, int8_mib, gate = int8.int8, round(int8.file_bytes / 2**20, 1), "passed"
        fp32_rate, int8_rate = model_only_rates(fp32.path, int8.path, batch, repeats)
        export_s = int8.total_seconds
    return {
        **row,
        "int8_export_s": round(export_s, 1),
        "int8_mib": int8_mib,
        "min_cosine": round(report.figures.min_cosine, 6),
        "mean_cosine": round(report.figures.mean_cosine, 6),
        "recall_at_10": round(report.figures.recall_at_10, 4),
        "pairwise_cosine": round(report.figures.reference_pairwise_cosine, 6),
        "gate": gate,
        "fp32_ops": f"{len(report.fp32_nodes)}/{report.quantizable_nodes}",
        "all_int8_mean_cosine": round(report.tries[0].figures.mean_cosine, 6),
        "all_int8_recall_at_10": round(report.tries[0].figures.recall_at_10, 4),
        "instruction_set": report.recipe.instruction_set,
        "fp32_img_s": round(fp32_rate, 2),
        "int8_img_s": round(int8_rate, 2),
        "int8_vs_fp32": round(int8_rate / fp32_rate, 3),
    }


def digits_checkpoints(folder: Path, console: Console) -> tuple[Path, dict[str, Path]]:
    """scikit-learn's digits as JPEGs, and small_cnn trained on them (as `featx demo` trains
    it) and at random initialisation: a model that tells its images apart, and one that may not."""
    digits = folder / "digits"
    write_digits(digits)
    trained = train(digits, "small_cnn", folder / "small_cnn-trained.pt", epochs=4, augment="light")
    console.print(f"small_cnn trained on digits: val accuracy {trained.best_val_accuracy:.3f}")
    return digits, {
        "small_cnn (trained, digits)": trained.checkpoint,
        "small_cnn (random, digits)": random_batchnorm_checkpoint(
            "small_cnn", folder / "small_cnn.pt"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="JSON file to write")
    parser.add_argument("--arch", nargs="*", default=list(ARCHS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--digits",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also small_cnn trained on digits and at random init, gated on digits",
    )
    args = parser.parse_args()

    rows = []
    console = Console(width=200)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photos = folder / "photos"
        make_corpus(photos, count=PHOTOS)
        for arch in args.arch:
            with console.status(f"exporting {arch} fp32 and int8"):
                checkpoint = random_batchnorm_checkpoint(arch, folder / f"{arch}.pt")
                rows.append(
                    int8_row(arch, checkpoint, folder, photos, args.batch_size, args.repeats)
                )
            console.print(rows[-1])
        if args.digits:
            digits, checkpoints = digits_checkpoints(folder, console)
            for name, checkpoint in checkpoints.items():
                with console.status(f"exporting {name} fp32 and int8"):
                    rows.append(
                        int8_row(name, checkpoint, folder, digits, args.batch_size, args.repeats)
                    )
                console.print(rows[-1])
    title = "featx-export --int8 vs fp32 (model-only featx.Runner, same run)"
    show_and_write_rows(console, title, rows, args.output)


if __name__ == "__main__":
    main()
