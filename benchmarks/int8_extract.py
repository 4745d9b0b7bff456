"""End to end on CPU: `featx extract` with featx-export --int8's file against the same model in
fp32 and against the eager PyTorch pipeline (torchvision + DataLoader), ResNet-50 over real-photo
JPEGs, timed alternately in one run (issue 15's >= 3x goal over eager).

    python benchmarks/int8_extract.py --output benchmarks/results/int8-extract-cpu.json

ResNet-50 is randomly initialised with trained-looking BatchNorm statistics (no downloads). Its
embeddings of different photos are ~0.9994 cosine to each other, so int8's rounding reorders
their neighbours and the default recall@10 gate (0.95) refuses the file (benchmarks/results/
int8-cpu.json); --recall sets the gate used here, and the row says what the int8 features kept.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

import featx
from featx.bench.corpus import make_corpus
from featx.bench.eager import eager_extract
from featx.bench.extraction import featx_extract_job
from featx.bench.report import show_and_write_rows
from featx.features import extractor_feature_model
from featx.models import get_extractor
from featx.models.checkpoint import save_checkpoint
from featx.quantization import Int8Gate, embedding_fidelity
from featx.runtime.shards import read_features
from featx.testing.models import randomize_batchnorm

ARCH = "resnet50"
EAGER_WORKERS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="JSON file to write")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--recall", type=float, default=0.85, help="the int8 gate's recall@10")
    args = parser.parse_args()

    console = Console(width=160)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        extractor = get_extractor(ARCH)
        torch.manual_seed(0)
        model = randomize_batchnorm(extractor.build_model()).eval()
        checkpoint = save_checkpoint(folder / f"{ARCH}.pt", model, ARCH)
        photos = make_corpus(folder / "photos", count=args.images)
        calibration = make_corpus(folder / "calibration", count=384, seed=1)
        with console.status("exporting fp32 and int8"):
            fp32 = featx.export(checkpoint, folder / "fp32.onnx")
            int8 = featx.export(
                checkpoint,
                folder / "int8.onnx",
                int8=True,
                calibrate=calibration,
                int8_gate=Int8Gate(recall_at_10=args.recall),
            )
        feature_model, _ = extractor_feature_model(extractor, model, extractor.preprocess.crop_size)
        runs = {
            "eager": lambda: eager_extract(
                feature_model, photos, extractor.preprocess, folder / "eager.npy",
                args.batch_size, workers=EAGER_WORKERS,
            ),
            "featx fp32": featx_extract_job(fp32.path, photos, folder / "fp32", args.batch_size),
            "featx int8": featx_extract_job(int8.path, photos, folder / "int8", args.batch_size),
        }  # fmt: skip
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                with console.status(f"{name}: {len(photos)} JPEGs"):
                    started = time.perf_counter()
                    run()
                    seconds[name].append(time.perf_counter() - started)
        eager_features = np.load(folder / "eager.npy")
        features = {
            "featx fp32": read_features(folder / "fp32")[1],
            "featx int8": read_features(folder / "int8")[1],
        }
    eager_rate = len(photos) / statistics.median(seconds["eager"])
    rows = []
    for name, times in seconds.items():
        rate = len(photos) / statistics.median(times)
        fidelity = embedding_fidelity(eager_features, features[name]) if name in features else None
        rows.append(
            {
                "pipeline": name,
                "images": len(photos),
                "runs_s": [round(t, 2) for t in times],
                "images_per_s": round(rate, 2),
                "vs_eager": round(rate / eager_rate, 3),
                "min_cosine_to_eager": round(fidelity.min_cosine, 6) if fidelity else None,
                "recall_at_10_to_eager": round(fidelity.recall_at_10, 4) if fidelity else None,
            }
        )
    title = f"{ARCH} end to end, int8 gate recall@10 >= {args.recall} (see the docstring)"
    show_and_write_rows(console, title, rows, args.output)


if __name__ == "__main__":
    main()
