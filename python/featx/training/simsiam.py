"""SimSiam self-supervised pretraining (Chen & He, 2021) on unlabeled images.

Two augmented views of each image go through encoder + projector (z) and the predictor (p);
the loss is the negative cosine similarity of p1 with a stop-gradient z2 and of p2 with z1,
averaged. The encoder is the arch's feature extractor (its curated layer and pooling), so the
checkpoint exports the encoder only: for ``simsiam_cnn`` the model is the SimSiam module itself
(feature layer ``encoder``); for any other arch the arch's own model is saved with its trained
backbone, and featx-export cuts it at the feature layer, leaving projector and predictor out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featx.features import extractor_feature_model
from featx.models.registry import Extractor
from featx.models.seeds import SimSiam


def build_simsiam(extractor: Extractor, input_size: int) -> tuple[nn.Module, SimSiam]:
    """(the model to save, the SimSiam module that trains it; they share the encoder)."""
    model = extractor.build_model(None)
    if isinstance(model, SimSiam):
        return model, model
    encoder, layout = extractor_feature_model(extractor, model, input_size)
    return model, SimSiam(encoder, encoder_dim=layout.embedding_dim)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-cos(p, stopgrad(z)), averaged over the batch."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


class SimSiamObjective(nn.Module):
    """Symmetrised SimSiam loss. It has no accuracy: early stopping does not apply."""

    def __init__(self, model: nn.Module, simsiam: SimSiam):
        super().__init__()
        self.model = model
        self.simsiam = simsiam

    def train_mode(self) -> None:
        self.simsiam.train()

    def _loss(self, views: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        z1, z2 = self.simsiam(views[0]), self.simsiam(views[1])
        p1, p2 = self.simsiam.predictor(z1), self.simsiam.predictor(z2)
        return (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2

    def step(
        self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        return self._loss(views), None

    evaluate = step
