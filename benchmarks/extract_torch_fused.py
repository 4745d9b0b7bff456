"""`featx extract --backend torch --fuse` against the eager DataLoader loop, JPEG folder to saved
features, on one device (scripts/gpu-check.sh runs it on the GPU machine).

    python benchmarks/extract_torch_fused.py --output RESULT.json [--device cuda] [--images 2000]
        [--workers 16] [--batch-size 64] [--work-dir DIR]

Both sides extract the same JPEGs (featx.bench.corpus) with the same ResNet-50 weights (random,
trained-looking BatchNorm statistics): featx with its C++ decode threads and the fused model
(float16, channels_last on CUDA), the eager loop (featx.bench.eager) with as many PIL worker
processes as featx has decode threads, the float32 model as users write it. Each side runs once
untimed (Triton compiles and autotunes, cuDNN picks its algorithms, the page cache fills), then
once timed. The fused features must match the eager ones within the fp16 export gate; the JSON
records both timings, the speedup, the parity figures and the environment. Exit 1 on a parity
failure.
"""

import argparse
import copy
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from featx.bench.corpus import make_corpus
from featx.bench.eager import eager_extract
from featx.bench.environment import environment
from featx.features import extractor_feature_model
from featx.models import get_extractor
from featx.models.checkpoint import save_checkpoint
from featx.parity import ParityGate, compare
from featx.runtime.extract import extract
from featx.runtime.shards import read_features
from featx.testing.models import randomize_batchnorm

ARCH = "resnet50"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work-dir", type=Path, help="keeps the corpus between runs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="featx-extract-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        paths = make_corpus(work / "corpus", count=args.images)
        corpus_s = time.perf_counter() - started
        extractor = get_extractor(ARCH)
        torch.manual_seed(0)
        module = randomize_batchnorm(extractor.build_model()).eval()
        checkpoint = save_checkpoint(work / f"{ARCH}.pt", module, ARCH)
        feature_model, _ = extractor_feature_model(
            extractor, module, extractor.preprocess.crop_size
        )
        eager_file = work / "eager.npy"
        featx_dir = work / "featx"

        def run_eager():
            eager_extract(
                copy.deepcopy(feature_model),
                paths,
                extractor.preprocess,
                eager_file,
                args.batch_size,
                workers=args.workers,
                device=args.device,
                warmup=False,
            )

        def run_featx():
            shutil.rmtree(featx_dir, ignore_errors=True)
            summary = extract(
                checkpoint,
                [str(path) for path in paths],
                featx_dir,
                batch_size=args.batch_size,
                workers=args.workers,
                device=args.device,
                backend="torch",
                fuse=True,
                progress=False,
            )
            if summary.errors:
                raise SystemExit(f"{summary.errors} images failed; see {featx_dir}/errors.jsonl")

        rows = {"eager": timed_twice(run_eager, args.device)}
        rows["featx-torch-fused"] = timed_twice(run_featx, args.device)
        eager_features = np.load(eager_file)
        featx_features = read_features(featx_dir)[1].astype(np.float32)

    figures = compare(eager_features, featx_features)
    gate = ParityGate.default(fp16=args.device == "cuda")
    failures = gate.failures("featx-torch-fused", figures)
    for row in rows.values():
        row["images_per_s"] = args.images / row["timed_s"]
    document = {
        "environment": environment(),
        "settings": {**vars(args), "output": str(args.output), "work_dir": str(args.work_dir)},
        "arch": ARCH,
        "corpus_s": round(corpus_s, 2),
        "eager": {**rows["eager"], "note": f"DataLoader, {args.workers} PIL workers, fp32"},
        "featx-torch-fused": {
            **rows["featx-torch-fused"],
            "note": f"featx extract --backend torch --fuse, {args.workers} C++ decode threads",
        },
        "speedup": rows["featx-torch-fused"]["images_per_s"] / rows["eager"]["images_per_s"],
        "parity": {**asdict(figures), "gate": asdict(gate), "failures": failures},
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(
        f"{args.images} JPEGs on {args.device}: eager {rows['eager']['images_per_s']:.0f} img/s, "
        f"featx --backend torch --fuse {rows['featx-torch-fused']['images_per_s']:.0f} img/s "
        f"({document['speedup']:.2f}x); min cosine {figures.min_cosine:.6f}; wrote {args.output}"
    )
    if failures:
        raise SystemExit("; ".join(failures))


def timed_twice(run, device):
    """Seconds of an untimed first run and of a timed second one, GPU work included."""
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return {"first_s": round(seconds[0], 3), "timed_s": round(seconds[1], 3)}


if __name__ == "__main__":
    main()
