"""featx train's methods on digits: epochs, seconds, and the exported embeddings' 5-NN and
linear-probe accuracy against the same arch at random initialisation and supervised.

    nice -n 10 python benchmarks/train_methods.py --output benchmarks/results/train-methods-cpu.json

Every figure goes through featx.export -> featx.extract -> featx.evaluate on all 1,797 digits
(`featx eval`'s fixed 80/20 split). "supervised" is the same arch, input size and epochs trained
on the digit labels with --method multitask --tasks digit: one linear head on the arch's feature
layer, which works for every arch here (simsiam_cnn and conv_autoencoder have no classifier head
of their own). The settings are those of tests/test_train_accuracy.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

import featx
from featx.bench.environment import environment
from featx.bench.report import show_and_write_rows, write_json
from featx.data.digits import label_of, write_digits
from featx.testing.models import random_init_checkpoint

CASES: list[dict[str, Any]] = [
    {"method": "simclr", "arch": "simsiam_cnn", "image_size": 16, "epochs": 6, "lr": 3e-3},
    {"method": "simsiam", "arch": "simsiam_cnn", "image_size": 16, "epochs": 6, "lr": 3e-3},
    {
        "method": "multitask",
        "arch": "simsiam_cnn",
        "image_size": 16,
        "epochs": 4,
        "tasks": ["digit", "parity"],
    },
    {
        "method": "autoencoder",
        "arch": "conv_autoencoder",
        "image_size": 8,
        "epochs": 10,
        "batch_size": 16,
        "lr": 3e-3,
    },
    {
        "method": "autoencoder",
        "arch": "conv_autoencoder",
        "image_size": 8,
        "epochs": 10,
        "batch_size": 16,
        "lr": 3e-3,
        "noise": 0.3,
    },
    {
        "method": "autoencoder",
        "arch": "conv_autoencoder",
        "image_size": 8,
        "epochs": 10,
        "batch_size": 16,
        "lr": 3e-3,
        "mask_ratio": 0.5,
    },
    {
        "method": "gan",
        "arch": "dcgan_discriminator",
        "image_size": 32,
        "epochs": 20,
        "batch_size": 32,
        "patience": 0,
    },
]


def exported_scores(checkpoint: Path, digits: Path, work: Path) -> tuple[float, float]:
    onnx = featx.export(checkpoint, work / f"{checkpoint.stem}.onnx").path
    features = work / f"{checkpoint.stem}-features"
    featx.extract(onnx, digits, features, progress=False, overwrite=True)
    scores = featx.evaluate(features, "folder").scores
    return round(scores.knn_accuracy, 4), round(scores.linear_probe_accuracy, 4)


def random_init_scores(arch: str, size: int, digits: Path, work: Path) -> tuple[float, float]:
    checkpoint = random_init_checkpoint(arch, size, work / f"random-{arch}-{size}.pt")
    return exported_scores(checkpoint, digits, work)


def timed_train(digits: Path, table: Path, output: Path, case: dict[str, Any]) -> tuple[float, int]:
    """Multitask reads the labels CSV, every other method the image folder."""
    data = table if case["method"] == "multitask" else digits
    settings = {k: v for k, v in case.items() if k != "arch"}
    started = time.perf_counter()
    result = featx.train(data, case["arch"], output, augment="light", progress=False, **settings)
    return round(time.perf_counter() - started, 1), len(result.history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="JSON file to write")
    parser.add_argument("--method", nargs="*", help="only these methods (default: all)")
    args = parser.parse_args()
    console = Console(width=200)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        digits = work / "digits"
        write_digits(digits)
        table = work / "digit-labels.csv"
        table.write_text(
            "path,digit,parity\n"
            + "".join(
                f"digits/{p.relative_to(digits).as_posix()},{label_of(p)},{label_of(p) % 2}\n"
                for p in sorted(digits.rglob("*.jpg"))
            )
        )
        baselines: dict[tuple[str, int, int], dict[str, float]] = {}
        for index, case in enumerate(CASES):
            if args.method and case["method"] not in args.method:
                continue
            arch, size = case["arch"], case["image_size"]
            with console.status(f"{case['method']} {arch}"):
                seconds, epochs = timed_train(digits, table, work / f"case{index}.pt", case)
                knn, probe = exported_scores(work / f"case{index}.pt", digits, work)
                key = (arch, size, case["epochs"])
                if key not in baselines:
                    random_knn, random_probe = random_init_scores(arch, size, digits, work)
                    supervised = work / f"supervised-{arch}-{size}-{case['epochs']}.pt"
                    featx.train(
                        table,
                        arch,
                        supervised,
                        method="multitask",
                        tasks=["digit"],
                        image_size=size,
                        epochs=case["epochs"],
                        augment="light",
                        progress=False,
                    )
                    supervised_knn, supervised_probe = exported_scores(supervised, digits, work)
                    baselines[key] = {
                        "random_knn": random_knn,
                        "random_probe": random_probe,
                        "supervised_knn": supervised_knn,
                        "supervised_probe": supervised_probe,
                    }
            variant = ", ".join(f"{k} {case[k]}" for k in ("noise", "mask_ratio") if k in case)
            rows.append(
                {
                    "method": case["method"] + (f" ({variant})" if variant else ""),
                    "arch": arch,
                    "image_size": size,
                    "epochs": epochs,
                    "seconds": seconds,
                    "knn": knn,
                    "probe": probe,
                    **baselines[key],
                }
            )
            console.print(rows[-1])
            if args.output is not None:
                # after every case: a run stopped part-way keeps the rows it measured
                write_json({"environment": environment(), "rows": rows}, args.output)
    show_and_write_rows(
        console, "featx train methods on digits (exported embeddings)", rows, args.output
    )


if __name__ == "__main__":
    main()
