"""`featx demo`: the main job end to end on real data that ships with scikit-learn, on CPU.

digits -> JPEG files -> train the seed CNN -> featx-export (BN folded, parity-checked on real
photos) -> featx extract (C++ decode + preprocess + ONNX Runtime, sharded output) ->
nearest-neighbour accuracy of the extracted embeddings vs raw pixels.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

from featx.data.digits import label_of, write_digits
from featx.export import export
from featx.extract import extract
from featx.models import get_extractor
from featx.models.checkpoint import save_checkpoint
from featx.preprocess import open_rgb, reference_transform
from featx.shards import MANIFEST

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
    extractor = get_extractor(ARCH)

    paths = write_digits(out / "digits")
    transform = reference_transform(extractor.preprocess)
    images = torch.stack([transform(open_rgb(p)) for p in paths])
    labels = torch.tensor([label_of(p) for p in paths])
    train_idx, val_idx = train_test_split(
        np.arange(len(paths)), test_size=0.2, random_state=SEED, stratify=labels.numpy()
    )
    console.print(f"digits: {len(paths)} images in {out / 'digits'} ({len(train_idx)} train)")

    torch.manual_seed(SEED)
    model = extractor.build_model(num_classes=10)
    val_accuracy = _train(model, images, labels, train_idx, val_idx, epochs, console)
    checkpoint = save_checkpoint(out / f"{ARCH}.pt", model, ARCH, classes=list(range(10)))

    with console.status("featx-export"):
        result = export(checkpoint, out / f"{ARCH}.onnx")
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
    embeddings = _extracted_embeddings(summary.out_dir, [str(p) for p in paths])
    knn_embedding = _knn_accuracy(embeddings, labels.numpy(), train_idx, val_idx)
    knn_pixels = _knn_accuracy(images.flatten(1).numpy(), labels.numpy(), train_idx, val_idx)
    figures = {
        "images": len(paths),
        "val_accuracy": val_accuracy,
        "knn_accuracy_embeddings": knn_embedding,
        "knn_accuracy_pixels": knn_pixels,
        "onnx": str(result.path),
        "extracted": summary.rows,
        "seconds": time.perf_counter() - started,
    }
    console.print(
        f"[bold]done[/] in {figures['seconds']:.1f}s: classifier val accuracy {val_accuracy:.3f}; "
        f"5-NN accuracy on extracted embeddings {knn_embedding:.3f} vs raw pixels "
        f"{knn_pixels:.3f}. "
        f"Output in {out}/"
    )
    return figures


def _train(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    epochs: int,
    console: Console,
) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(SEED)
    train = torch.as_tensor(train_idx)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("training small_cnn", total=epochs)
        for _ in range(epochs):
            model.train()
            for batch in train[torch.randperm(len(train), generator=generator)].split(64):
                loss = F.cross_entropy(model(images[batch]), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            progress.advance(task)
    model.eval()
    with torch.no_grad():
        predicted = model(images[val_idx]).argmax(dim=1)
    return float((predicted == labels[val_idx]).float().mean())


def _extracted_embeddings(out_dir: Path, paths: list[str]) -> np.ndarray:
    """The embeddings featx extract wrote, in the order of ``paths``."""
    manifest = json.loads((out_dir / MANIFEST).read_text())
    rows: dict[str, np.ndarray] = {}
    for shard in manifest["shards"]:
        ids = json.loads((out_dir / shard["files"]["ids"]).read_text())
        rows.update(zip(ids, np.load(out_dir / shard["files"]["features"]), strict=True))
    return np.stack([rows[path] for path in paths])


def _knn_accuracy(
    features: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray
) -> float:
    knn = KNeighborsClassifier(n_neighbors=5).fit(features[train_idx], labels[train_idx])
    return float(knn.score(features[val_idx], labels[val_idx]))
