"""A k-NN monitor for the self-supervised methods: how well do the embeddings classify now?

After each epoch the encoder embeds the training images (the memory) and the held-out images
(the queries), both with the eval transform; each query takes the majority label of its k most
cosine-similar memory rows, ties going to the lowest class index (as scikit-learn's
KNeighborsClassifier, which `featx eval` uses, breaks them). The labels never reach the
training objective: they only judge the epochs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_K = 5


def knn_accuracy(
    memory: torch.Tensor,
    memory_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    k: int = DEFAULT_K,
) -> float:
    """Fraction of ``queries`` whose k nearest ``memory`` rows (cosine) vote their label."""
    similarity = F.normalize(queries.float(), dim=1) @ F.normalize(memory.float(), dim=1).T
    nearest = similarity.topk(min(k, len(memory)), dim=1).indices
    classes = int(max(memory_labels.max(), query_labels.max())) + 1
    votes = F.one_hot(memory_labels[nearest], classes).sum(dim=1)
    return float((votes.argmax(dim=1) == query_labels).float().mean())


class KnnMonitor:
    """k-NN accuracy of ``encoder``'s embeddings of ``queries`` against those of ``memory``
    (loaders of (image, label) batches, eval transform, no shuffling)."""

    def __init__(
        self,
        encoder: nn.Module,
        memory: torch.utils.data.DataLoader,
        queries: torch.utils.data.DataLoader,
        k: int = DEFAULT_K,
    ):
        self.encoder = encoder
        self.memory = memory
        self.queries = queries
        self.k = k

    @torch.no_grad()
    def accuracy(self, device: torch.device, use_amp: bool) -> float:
        """Called in eval mode (the loop's validation), so BatchNorm statistics stay as they are."""
        memory, memory_labels = self._embed(self.memory, device, use_amp)
        queries, query_labels = self._embed(self.queries, device, use_amp)
        return knn_accuracy(memory, memory_labels, queries, query_labels, self.k)

    def _embed(
        self, loader: torch.utils.data.DataLoader, device: torch.device, use_amp: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings, labels = [], []
        for images, batch_labels in loader:
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                embeddings.append(self.encoder(images.to(device)).float().cpu())
            labels.append(batch_labels)
        return torch.cat(embeddings), torch.cat(labels)
