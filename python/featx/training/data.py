"""Training data: an ImageFolder-style directory, a CSV of ``path,label``, or (multitask) a CSV
with a header row naming a ``path`` column and one column per task, checked up front.

Every image is decoded once before training starts, to find the files that cannot be decoded:
they are skipped and counted (never fatal) unless nothing usable remains; the dataset decodes
the usable ones again on access, so memory stays flat whatever the data's size. The train/val
split is stratified and fixed by the seed, so a resumed run and a rerun see the same split.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Sequence
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
    label: int | tuple[int, ...] | None
    """A class index, one class index per task (multitask), or None (unlabeled)."""


@dataclass
class TrainingData:
    """Usable samples, their class names (empty when unlabeled or multitask), each task's class
    names (multitask) and what was skipped."""

    samples: list[Sample]
    classes: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    tasks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def labeled(self) -> bool:
        return bool(self.classes)

    def split(self, val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
        """Stratified (when labeled; multitask: by the first task) train/val split fixed by
        ``seed``."""
        from sklearn.model_selection import train_test_split  # heavy import, only when training

        if not 0 < val_fraction < 1:
            raise FeatxError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
        indices = np.arange(len(self.samples))
        stratify = None
        if self.labeled or self.tasks:
            if self.tasks:
                first, names = next(iter(self.tasks.items()))
                labels = np.array([s.label[0] for s in self.samples])
                what = f"task {first!r}: class"
            else:
                names, labels, what = (
                    self.classes,
                    np.array([s.label for s in self.samples]),
                    "class",
                )
            counts = Counter(labels.tolist())
            smallest = min(counts.values())
            if smallest * val_fraction < MIN_VAL_PER_CLASS or smallest < 2:
                name = names[min(counts, key=counts.get)]
                raise FeatxError(
                    f"{what} {name!r} has only {smallest} usable image(s): too few to hold out "
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


def load_multitask_data(source: str | Path, tasks: Sequence[str]) -> TrainingData:
    """Reads a CSV whose header names a ``path`` column and the ``tasks`` columns (other columns
    are ignored); each task's labels become class indices, in natural order."""
    source = Path(source)
    if not source.is_file() or source.suffix.lower() != ".csv":
        raise FeatxError(
            f"--method multitask reads a CSV with a header row (path,TASK1,TASK2,...); "
            f"{source} is not a .csv file"
        )
    if not tasks:
        raise FeatxError("--method multitask needs --tasks COLUMN1,COLUMN2 (label columns)")
    if len(set(tasks)) != len(tasks):
        raise FeatxError(f"--tasks names a column twice: {', '.join(tasks)}")
    with source.open(newline="") as stream:
        reader = csv.DictReader(stream)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        rows = [row for row in reader if any((value or "").strip() for value in row.values())]
    absent = [name for name in ("path", *tasks) if name not in header]
    if absent:
        raise FeatxError(
            f"{source} has no column(s) {', '.join(absent)} (its header: {', '.join(header)}); "
            "the first row must name a path column and the --tasks columns"
        )
    columns = ("path", *tasks)
    bad = [i for i, row in enumerate(rows, 2) if any(not (row[c] or "").strip() for c in columns)]
    if bad:
        raise FeatxError(f"{source}: line(s) {bad[:5]} leave the path or a task label empty")
    paths = [source.parent / row["path"].strip() for row in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FeatxError(
            f"{source} names {len(missing)} file(s) that do not exist (paths are relative to the "
            f"CSV's folder), e.g. {', '.join(missing[:3])}"
        )
    task_classes = {
        task: sorted({row[task].strip() for row in rows}, key=_natural_key) for task in tasks
    }
    single = [task for task, names in task_classes.items() if len(names) < 2]
    if single:
        raise FeatxError(
            f"task(s) {', '.join(single)} of {source} have a single class; each task needs two"
        )
    index = {
        task: {name: i for i, name in enumerate(names)} for task, names in task_classes.items()
    }
    candidates = [
        (path, tuple(index[task][row[task].strip()] for task in tasks))
        for path, row in zip(paths, rows, strict=True)
    ]
    samples, skipped = _decodable(candidates)
    if not samples:
        raise FeatxError(f"none of the images {source} names could be decoded; nothing to train on")
    return TrainingData(samples, [], skipped, task_classes)


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


def _decodable(
    candidates: list[tuple[Path, int | tuple[int, ...] | None]],
) -> tuple[list[Sample], list[dict]]:
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

    def __getitem__(self, index: int) -> tuple[object, int | torch.Tensor]:
        """Labels: the class index, -1 when unlabeled, a tensor of one index per task."""
        sample = self.samples[index]
        label = sample.label
        if isinstance(label, tuple):
            label = torch.tensor(label)
        return self.transform(open_rgb(sample.path)), -1 if label is None else label
