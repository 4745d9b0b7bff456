"""The end of a training run: training curves as a PNG and a printed summary."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from featx.runtime.files import write_atomic


def write_curves(path: Path, history: list[dict[str, float]], title: str) -> Path:
    """Loss (left) and accuracy (right, when the run has one: a classifier's, or the k-NN
    monitor's) per epoch, written atomically."""
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    lines = {
        "loss": {"train": "train_loss", "val": "val_loss"},
        "accuracy": {
            "train": "train_accuracy",
            "val": "val_accuracy",
            "val 5-NN": "val_knn_accuracy",
        },
    }
    has_accuracy = any(key in row for key in lines["accuracy"].values() for row in history)
    figure = Figure(figsize=(10 if has_accuracy else 5, 3.6), layout="constrained")
    axes = figure.subplots(1, 2 if has_accuracy else 1, squeeze=False)[0]
    panels = [("loss", axes[0])] + ([("accuracy", axes[1])] if has_accuracy else [])
    for metric, ax in panels:
        for label, key in lines[metric].items():
            points = [(e, row[key]) for e, row in zip(epochs, history, strict=True) if key in row]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())
    return path


def print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title=f"featx train: {summary['method']} {summary['arch']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("data", f"{summary['train_images']} train / {summary['val_images']} val images"),
        ("skipped images", f"{summary['skipped_images']} (could not be decoded)"),
        (
            ("tasks", ", ".join(f"{t} ({len(c)} classes)" for t, c in summary["tasks"].items()))
            if summary["tasks"]
            else ("classes", str(summary["num_classes"] or "unlabeled"))
        ),
        ("trainable", f"{summary['trainable_parameters']:,} of {summary['parameters']:,}"),
        ("epochs run", f"{summary['epochs_run']} (early stop: {summary['stopped_early']})"),
        ("best epoch", str(summary["best_epoch"])),
    ]
    if summary["best_value"] is not None:
        rows.append(
            (f"best {summary['monitor'].replace('_', ' ')}", f"{summary['best_value']:.4f}")
        )
    rows += [
        ("final train loss", f"{summary['final_train_loss']:.4f}"),
        ("time", f"{summary['seconds']:.1f}s on {summary['device']}"),
        ("checkpoint", summary["checkpoint"]),
        ("curves", summary["curves"]),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
