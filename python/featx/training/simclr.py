"""SimCLR contrastive pretraining (Chen et al., 2020) on unlabeled images.

Two augmented views of each of the N images in a batch go through the encoder (the arch's
feature layer) and a projection head g; with z = g(f(view)) / ||g(f(view))|| for all 2N views,
the NT-Xent (InfoNCE) loss of a view i whose positive is the other view j(i) of its image is

    l_i = -log( exp(z_i . z_j(i) / T) / sum_{k != i} exp(z_i . z_k / T) ),

averaged over the 2N views: the other 2N - 2 views of the batch are the negatives. The
projection head is a training aid only: the saved model is the arch's own, whose trained
backbone featx-export cuts at the feature layer.

Negatives come from the batch alone (no MoCo queue or momentum encoder): at the batch sizes that
fit a 2-core CPU (64-256 images) a batch already offers 126-510 negatives, and a queue would add
a second encoder's forward pass per step and more state to resume exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featx.features import extractor_feature_model
from featx.models.registry import Extractor
from featx.runtime.errors import FeatxError

DEFAULT_TEMPERATURE = 0.5
"""SimCLR's setting for CIFAR-10-sized images and batches of a few hundred (its appendix B.9);
0.1, its ImageNet value, is tuned for batches of thousands."""
PROJECTION_HIDDEN = 256
PROJECTION_DIM = 64


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The NT-Xent loss of the paired projections ``z1[i]``, ``z2[i]`` (un-normalised)."""
    count = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = (z @ z.T) / temperature
    itself = torch.eye(2 * count, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(itself, float("-inf"))
    positives = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(z.device)
    return F.cross_entropy(logits, positives)


def projection_head(encoder_dim: int) -> nn.Sequential:
    """SimCLR's two-layer MLP g, sized for small encoders."""
    return nn.Sequential(
        nn.Linear(encoder_dim, PROJECTION_HIDDEN, bias=False),
        nn.BatchNorm1d(PROJECTION_HIDDEN),
        nn.ReLU(inplace=True),
        nn.Linear(PROJECTION_HIDDEN, PROJECTION_DIM),
    )


class SimCLRObjective(nn.Module):
    """NT-Xent over the batch's two views. It reports no accuracy: the epochs are judged by the
    k-NN monitor when the data has labels, else by the held-out loss."""

    def __init__(self, extractor: Extractor, input_size: int, temperature: float):
        super().__init__()
        if temperature <= 0:
            raise FeatxError(f"--temperature must be > 0, got {temperature}")
        self.model = extractor.build_model(None)
        self.encoder, layout = extractor_feature_model(extractor, self.model, input_size)
        self.projector = projection_head(layout.embedding_dim)
        self.temperature = temperature

    def train_mode(self) -> None:
        self.train()

    def step(
        self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        z1 = self.projector(self.encoder(views[0]))
        z2 = self.projector(self.encoder(views[1]))
        return nt_xent(z1, z2, self.temperature), None

    evaluate = step
