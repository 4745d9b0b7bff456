"""Multi-task supervised training: one shared backbone, one linear head per label column.

With f the arch's feature layer (its exported embedding) and h_t the head of task t,

    loss = sum_t w_t * cross-entropy(h_t(f(x)), y_t)       (label smoothing as --label-smoothing)

for the ``tasks`` columns of the CSV and their ``weights`` (1 each unless set). The reported
accuracy is the mean over tasks of each task's accuracy; it judges the epochs. The heads are a
training aid like SimCLR's projector: the checkpoint is the arch's own model with the trained
backbone, which featx-export cuts at the feature layer, and it records each task's classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from featx.features import extractor_feature_model
from featx.models.registry import Extractor
from featx.runtime.errors import FeatxError


def checked_weights(tasks: Sequence[str], weights: Sequence[float] | None) -> list[float]:
    """One non-negative weight per task, not all zero; 1 each by default."""
    if weights is None:
        return [1.0] * len(tasks)
    if len(weights) != len(tasks):
        raise FeatxError(
            f"--task-weights gives {len(weights)} weight(s) for {len(tasks)} task(s) "
            f"({', '.join(tasks)}); give one per task, in the same order"
        )
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise FeatxError(f"--task-weights must be >= 0 and not all 0, got {list(weights)}")
    return [float(w) for w in weights]


class MultitaskObjective(nn.Module):
    def __init__(
        self,
        extractor: Extractor,
        input_size: int,
        task_classes: dict[str, list[str]],
        weights: Sequence[float],
        label_smoothing: float,
    ):
        super().__init__()
        self.model = extractor.build_model(None)
        self.backbone, layout = extractor_feature_model(extractor, self.model, input_size)
        self.heads = nn.ModuleList(
            nn.Linear(layout.embedding_dim, len(classes)) for classes in task_classes.values()
        )
        self.register_buffer("weights", torch.tensor(list(weights)), persistent=False)
        self.label_smoothing = label_smoothing

    def train_mode(self) -> None:
        self.train()

    def _losses(
        self, images: torch.Tensor, labels: torch.Tensor, smoothing: float
    ) -> tuple[torch.Tensor, float]:
        features = self.backbone(images)
        loss = features.new_zeros(())
        correct = 0
        for task, head in enumerate(self.heads):
            logits = head(features)
            target = labels[:, task]
            cross_entropy = F.cross_entropy(logits, target, label_smoothing=smoothing)
            loss = loss + self.weights[task] * cross_entropy
            correct += int((logits.argmax(dim=1) == target).sum())
        return loss, correct / len(self.heads)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        return self._losses(images, labels, self.label_smoothing)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Plain cross-entropy, as supervised validation."""
        return self._losses(images, labels, 0.0)
