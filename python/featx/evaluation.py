"""`featx eval`: how good are extracted features? k-NN accuracy and a linear probe.

Features are the shards `featx extract` wrote (read through its manifest); labels come from a
CSV ``path,label`` (paths relative to the CSV's folder) or from each image's parent folder name.
Both classifiers use one stratified split fixed by the seed, so two feature sets (say, before
and after fine-tuning) are compared on exactly the same images:
  k-NN: majority vote of the k nearest training rows by cosine similarity;
  linear probe: multinomial logistic regression on standardised features.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.runtime.errors import FeatxError
from featx.runtime.inputs import read_label_rows
from featx.runtime.shards import read_features

DEFAULT_K = 5
PROBE_MAX_ITER = 2000


@dataclass(frozen=True)
class FeatureScores:
    knn_accuracy: float
    linear_probe_accuracy: float
    chance_accuracy: float
    train_rows: int
    test_rows: int
    k: int


@dataclass(frozen=True)
class EvalResult:
    features_dir: str
    rows: int
    dim: int
    classes: list[str]
    scores: FeatureScores
    unlabeled_rows: int
    failed_inputs: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("scores"))
        return data


def score_features(
    features: np.ndarray,
    labels: Sequence[Any],
    *,
    k: int = DEFAULT_K,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> FeatureScores:
    """k-NN and linear-probe accuracy of ``features`` (rows, D) for ``labels`` on a fixed split."""
    # scikit-learn is imported here, not at module level: `import featx` stays light.
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    counts = Counter(labels.tolist())
    if len(counts) < 2:
        raise FeatxError(f"labels name {len(counts)} class(es); accuracy needs at least two")
    if not 0 < test_fraction < 1:
        raise FeatxError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    if min(counts.values()) < 2:
        rare = [str(c) for c, n in counts.items() if n < 2]
        raise FeatxError(
            f"class(es) {', '.join(rare[:5])} have a single labelled row; a split needs >= 2 each"
        )
    if k < 1:
        raise FeatxError(f"--k must be >= 1, got {k}")
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    k = min(k, len(train_idx))
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    knn = KNeighborsClassifier(n_neighbors=k).fit(unit[train_idx], labels[train_idx])
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER, random_state=seed)
    ).fit(features[train_idx], labels[train_idx])
    return FeatureScores(
        knn_accuracy=float(knn.score(unit[test_idx], labels[test_idx])),
        linear_probe_accuracy=float(probe.score(features[test_idx], labels[test_idx])),
        chance_accuracy=max(counts.values()) / len(labels),
        train_rows=len(train_idx),
        test_rows=len(test_idx),
        k=k,
    )


def evaluate(
    features_dir: str | Path,
    labels: str | Path = "folder",
    *,
    k: int = DEFAULT_K,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> EvalResult:
    """Scores the features in ``features_dir``; ``labels`` is a CSV path or ``"folder"``."""
    started = time.perf_counter()
    ids, features, errors = read_features(features_dir)
    if str(labels) == "folder":
        row_labels = [Path(i).parent.name for i in ids]
        keep = np.arange(len(ids))
    else:
        row_labels, keep = _labels_from_csv(Path(labels), ids, errors)
    classes = sorted(set(row_labels))
    scores = score_features(
        features[keep],
        row_labels,
        k=k,
        test_fraction=test_fraction,
        seed=seed,
    )
    return EvalResult(
        features_dir=str(features_dir),
        rows=len(keep),
        dim=int(features.shape[1]),
        classes=classes,
        scores=scores,
        unlabeled_rows=len(ids) - len(keep),
        failed_inputs=len(errors),
        seconds=time.perf_counter() - started,
    )


def _labels_from_csv(
    path: Path, ids: list[str], errors: list[dict[str, str]]
) -> tuple[list[str], np.ndarray]:
    """Labels of the rows the CSV names. A CSV path matches a row whose id is the same file, or
    (relative paths) whose id ends with it; files extraction reported as errors are skipped."""
    if not path.is_file():
        raise FeatxError(f"--labels {path}: no such file (pass a CSV path,label or 'folder')")
    rows = read_label_rows(path)
    if not rows or any(len(r) < 2 for r in rows):
        raise FeatxError(f"--labels {path}: expected rows of the form path,label")
    by_file = {str(Path(i).resolve()): n for n, i in enumerate(ids)}
    by_tail: dict[str, int | None] = {}
    for n, i in enumerate(ids):
        parts = Path(i).parts
        for start in range(len(parts)):
            tail = Path(*parts[start:]).as_posix()
            by_tail[tail] = None if tail in by_tail else n
    failed = {Path(e["path"]).name for e in errors}
    labels, keep, missing = [], [], []
    for entry, label in ((r[0].strip(), r[1].strip()) for r in rows):
        row = by_file.get(str((path.parent / entry).resolve()))
        if row is None and not Path(entry).is_absolute():
            row = by_tail.get(Path(entry).as_posix())
        if row is not None:
            keep.append(row)
            labels.append(label)
        elif Path(entry).name not in failed:
            missing.append(entry)
    if missing:
        raise FeatxError(
            f"--labels {path} names {len(missing)} file(s) that are not among the extracted "
            f"features (e.g. {', '.join(missing[:3])}); extract them, or fix the paths "
            "(relative to the CSV's folder)"
        )
    return labels, np.array(keep, dtype=np.int64)


def print_eval(result: EvalResult, console: Any) -> None:
    from rich.table import Table

    scores = result.scores
    table = Table(title=f"featx eval: {result.features_dir}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in (
        (
            "rows",
            f"{result.rows} labelled ({result.unlabeled_rows} unlabelled ignored, "
            f"{result.failed_inputs} failed at extraction)",
        ),
        ("features", f"{result.dim}-d, {len(result.classes)} classes"),
        ("split", f"{scores.train_rows} train / {scores.test_rows} test (stratified, fixed seed)"),
        (f"{scores.k}-NN accuracy (cosine)", f"{scores.knn_accuracy:.4f}"),
        ("linear probe accuracy", f"{scores.linear_probe_accuracy:.4f}"),
        ("chance (majority class)", f"{scores.chance_accuracy:.4f}"),
    ):
        table.add_row(key, value)
    console.print(table)
