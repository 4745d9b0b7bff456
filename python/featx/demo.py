"""`featx demo`: the main job end to end on real data that ships with scikit-learn, on CPU.

digits -> JPEG files -> featx train (seed CNN) -> featx-export (BN folded, parity-checked on
real photos) -> featx extract (C++ decode + preprocess + ONNX Runtime, sharded output) ->
featx eval (k-NN and linear-probe accuracy of the extracted embeddings, vs raw pixels).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from featx.data.digits import write_digits
from featx.evaluation import evaluate, score_features
from featx.exporter import export
from featx.models import get_extractor
from featx.preprocess import reference_transform
from featx.runtime.decode import open_rgb
from featx.runtime.extract import extract
from featx.runtime.shards import read_features
from featx.training import train

ARCH = "small_cnn"
SEED = 0


def run_demo(
    out_dir: str | Path = "featx-demo", epochs: int = 4, console: Console | None = None
) -> dict:
    """Runs the demo into ``out_dir`` and returns its figures."""
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    paths = write_digits(out / "digits")
    console.print(f"digits: {len(paths)} images in {out / 'digits'}")
    trained = train(
        out / "digits",
        ARCH,
        out / f"{ARCH}.pt",
        epochs=epochs,
        augment="light",
        seed=SEED,
        console=console,
    )
    console.print(
        f"trained {ARCH}: best val accuracy {trained.best_val_accuracy:.3f} "
        f"({trained.train_images} train / {trained.val_images} val, {trained.seconds:.1f}s); "
        f"curves in {trained.curves}"
    )

    with console.status("featx-export"):
        result = export(trained.checkpoint, out / f"{ARCH}.onnx")
    worst = result.parity.worst()
    console.print(
        f"exported {result.path}: {result.metadata.embedding_dim}-d, "
        f"{len(result.fold.folded)} BatchNorm folded, parity max-abs/scale {worst.max_rel:.1e}, "
        f"min cosine {worst.min_cosine:.7f} (random inputs + real photos)"
    )

    summary = extract(result.path, out / "digits", out / "features", progress=False)
    console.print(
        f"extracted {summary.rows} embeddings ({summary.errors} errors) at "
        f"{summary.images_per_second:.0f} img/s into {summary.out_dir}"
    )
    scores = evaluate(summary.out_dir, "folder", seed=SEED).scores
    ids, _, _ = read_features(summary.out_dir)
    transform = reference_transform(get_extractor(ARCH).preprocess)
    pixels = torch.stack([transform(open_rgb(i)) for i in ids]).flatten(1).numpy()
    pixel_scores = score_features(pixels, [Path(i).parent.name for i in ids], seed=SEED)
    figures = {
        "images": len(paths),
        "val_accuracy": trained.best_val_accuracy,
        "knn_accuracy_embeddings": scores.knn_accuracy,
        "linear_probe_accuracy_embeddings": scores.linear_probe_accuracy,
        "knn_accuracy_pixels": pixel_scores.knn_accuracy,
        "linear_probe_accuracy_pixels": pixel_scores.linear_probe_accuracy,
        "onnx": str(result.path),
        "extracted": summary.rows,
        "seconds": time.perf_counter() - started,
    }
    console.print(
        f"[bold]done[/] in {figures['seconds']:.1f}s: classifier val accuracy "
        f"{figures['val_accuracy']:.3f}; on extracted embeddings {scores.k}-NN "
        f"{scores.knn_accuracy:.3f} / linear probe {scores.linear_probe_accuracy:.3f} vs raw "
        f"pixels {pixel_scores.knn_accuracy:.3f} / {pixel_scores.linear_probe_accuracy:.3f}. "
        f"Output in {out}/"
    )
    return figures
