"""Training data: an ImageFolder-style directory or a CSV of ``path,label``, checked up front.

Every image is decoded once before training starts, to find the files that cannot be decoded:
they are skipped and counted (never fatal) unless nothing usable remains; the dataset decodes
the usable ones again on access, so memory stays flat whatever the data's size. The train/val
split is stratified and fixed by the seed, so a resumed run and a rerun see the same split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featx.runtime.decode import decode_rgb, open_rgb
from featx.runtime.errors import FeatxError, ImageDecodeError
from featx.runtime.inputs import IMAGE_SUFFIXES, read_label_rows

MIN_VAL_PER_CLASS = 1


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int | None


@dataclass
class TrainingData:
    """Usable samples, their class names (empty when unlabeled) and what was skipped."""

    samples: list[Sample]
    classes: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def labeled(self) -> bool:
        return bool(self.classes)

    def split(self, val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
        """Stratified (when labeled) train/val split fixed by ``seed``."""
        from sklearn.model_selection import train_test_split  # heavy import, only when training

        if not 0 < val_fraction < 1:
            raise FeatxError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
        indices = np.arange(len(self.samples))
        stratify = None
        if self.labeled:
            labels = np.array([s.label for s in self.samples])
            counts = Counter(labels.tolist())
            smallest = min(counts.values())
            if smallest * val_fraction < MIN_VAL_PER_CLASS or smallest < 2:
                name = self.classes[min(counts, key=counts.get)]
                raise FeatxError(
                    f"class {name!r} has only {smallest} usable image(s): too few to hold out "
                    f"{val_fraction:.0%} for validation. Add images or merge small classes."
                )
            stratify = labels
        train_idx, val_idx = train_test_split(
            indices, test_size=val_fraction, random_state=seed, stratify=stratify
        )
        return [self.samples[i] for i in sorted(train_idx)], [
            self.samples[i] for i in sorted(val_idx)
        ]


def load_training_data(source: str | Path, *, labeled: bool = True) -> TrainingData:
    """Reads a class-per-folder directory, a CSV ``path,label`` file, or (``labeled=False``) any
    folder of images; raises FeatxError when the data cannot train a model."""
    source = Path(source)
    if not source.exists():
        raise FeatxError(f"no such training data: {source} (pass a folder or a CSV file)")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise FeatxError(
                f"{source} is a file but not a .csv; pass a folder of images (one sub-folder "
                "per class) or a CSV with rows path,label"
            )
        candidates, classes = _read_csv(source)
        if not labeled:
            candidates, classes = [(p, None) for p, _ in candidates], []
    elif labeled:
        candidates, classes = _read_image_folder(source)
    else:
        candidates, classes = [(p, None) for p in _images_under(source)], []
    if not candidates:
        raise FeatxError(
            f"{source} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    samples, skipped = _decodable(candidates)
    if not samples:
        raise FeatxError(
            f"none of the {len(candidates)} images in {source} could be decoded "
            f"(first: {skipped[0]['reason']}); nothing to train on"
        )
    if labeled:
        present = {s.label for s in samples}
        if len(present) < 2:
            raise FeatxError(
                f"{source} has usable images of {len(present)} class(es) only "
                f"({', '.join(classes[i] for i in sorted(present))}); a classifier needs at "
                "least two. For unlabeled data use --method simsiam (or distill with a teacher)."
            )
    return TrainingData(samples, classes, skipped)


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _read_image_folder(folder: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and _images_under(d))
    loose = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not class_dirs:
        if loose:
            raise FeatxError(
                f"{folder} holds images but no class sub-folders; supervised training needs "
                "one sub-folder per class (or a CSV path,label). For unlabeled images use "
                "--method simsiam or --method distill."
            )
        raise FeatxError(f"{folder} is empty: no class sub-folders with images")
    if len(class_dirs) < 2:
        raise FeatxError(
            f"{folder} has one class only ({class_dirs[0].name}); a classifier needs at least "
            "two class sub-folders."
        )
    classes = [d.name for d in class_dirs]
    return [(p, i) for i, d in enumerate(class_dirs) for p in _images_under(d)], classes


def _read_csv(path: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    rows = read_label_rows(path)
    bad = [i for i, row in enumerate(rows, 1) if len(row) < 2 or not row[1].strip()]
    if bad:
        raise FeatxError(f"{path}: row(s) {bad[:5]} do not have the form path,label")
    entries = [((path.parent / row[0].strip()), row[1].strip()) for row in rows]
    missing = [str(p) for p, _ in entries if not p.is_file()]
    if missing:
        raise FeatxError(
            f"{path} names {len(missing)} file(s) that do not exist (paths are relative to the "
            f"CSV's folder), e.g. {', '.join(missing[:3])}"
        )
    classes = sorted({label for _, label in entries}, key=_natural_key)
    index = {name: i for i, name in enumerate(classes)}
    return [(p, index[label]) for p, label in entries], classes


def _natural_key(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def _decodable(candidates: list[tuple[Path, int | None]]) -> tuple[list[Sample], list[dict]]:
    samples, skipped = [], []
    for path, label in candidates:
        try:
            decode_rgb(path)
        except ImageDecodeError as err:
            skipped.append({"path": str(path), "reason": str(err)})
            continue
        samples.append(Sample(path, label))
    return samples, skipped


class ImageDataset(torch.utils.data.Dataset):
    """Decodes on access and applies ``transform``; yields (image(s), label or -1)."""

    def __init__(self, samples: list[Sample], transform: Callable[[Image.Image], object]):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[object, int]:
        sample = self.samples[index]
        return self.transform(open_rgb(sample.path)), -1 if sample.label is None else sample.label
