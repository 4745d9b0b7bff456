"""Supervised transfer learning: starting weights, a new head, and which parts train.

Strategies: ``linear`` trains only the new head (frozen backbone, a linear probe that also sees
augmentations); ``partial`` trains the head plus the last ``blocks`` backbone blocks; ``full``
trains everything. A *block* is a top-level child module of the model that holds parameters,
in registration order, the head's own top-level module excluded: for resnet18 the blocks are
conv1, bn1, layer1..layer4 (``partial`` with 1 block = layer4 + fc), for small_cnn features and
embed, for vit_b_16 conv_proj and encoder. Frozen parts stay in eval mode, so their BatchNorm
statistics do not drift either.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from featx.models.checkpoint import _final_linear_name, _unwrap_state_dict
from featx.models.registry import Extractor
from featx.options import STRATEGIES
from featx.runtime.errors import FeatxError


def head_name(model: nn.Module, arch: str) -> str:
    head = _final_linear_name(model)
    if head is None:
        raise FeatxError(
            f"arch {arch!r} has no final nn.Linear classifier to replace; supervised training "
            "and distillation need one. Use --method simsiam for it, or another arch."
        )
    return head


def build_classifier(extractor: Extractor, num_classes: int) -> tuple[nn.Module, str]:
    """A fresh model of the arch with a head sized for ``num_classes`` (no download)."""
    model = extractor.build_model(num_classes)
    head = head_name(model, extractor.name)
    if model.get_submodule(head).out_features != num_classes:
        raise FeatxError(
            f"arch {extractor.name!r} is not a classifier (its last linear layer {head!r} does "
            "not take a class count); use --method simsiam for it, or another arch."
        )
    return model, head


def load_init(
    model: nn.Module,
    arch: str,
    path: str | Path,
    head: str | None,
    classes: list[str] | None = None,
) -> int:
    """Loads starting weights into ``model``: a torchvision-style state_dict file or a featx
    checkpoint of the same arch. The head starts fresh when the weights' head has another shape,
    or when a featx checkpoint was trained on other ``classes`` (a head for classes 0-4 is no
    start for classes 5-9, even at the same count). Returns the number of tensors loaded; every
    other mismatch is a FeatxError."""
    path = Path(path)
    if not path.is_file():
        raise FeatxError(
            f"--init {path}: no such file. Pass a local weights file (a torchvision state_dict "
            "saved with torch.save, or a featx checkpoint); featx never downloads weights."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise FeatxError(
            f"--init {path} is not a readable weights file ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); pass a state_dict or a featx "
            "checkpoint saved with torch.save"
        ) from err
    if isinstance(obj, dict) and "arch" in obj and "state_dict" in obj and obj["arch"] != arch:
        raise FeatxError(
            f"--init {path} is a featx checkpoint of arch {obj['arch']!r}, not {arch!r}; pass "
            f"--arch {obj['arch']} or weights of {arch}"
        )
    state = _unwrap_state_dict(obj)
    if state is None:
        raise FeatxError(f"--init {path} holds no state_dict of tensors")
    expected = model.state_dict()
    head_keys = {f"{head}.weight", f"{head}.bias"} if head else set()
    trained_classes = obj.get("featx", {}).get("classes") if isinstance(obj, dict) else None
    other_classes = classes is not None and trained_classes is not None
    other_classes = other_classes and list(trained_classes) != list(classes)
    usable = {
        k: v
        for k, v in state.items()
        if not (k in head_keys and (other_classes or v.shape != expected.get(k, v).shape))
    }
    missing = [k for k in expected if k not in usable and k not in head_keys]
    unexpected = [k for k in usable if k not in expected]
    mismatched = [k for k in usable if k in expected and usable[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        problems = "; ".join(
            f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape-mismatched", mismatched),
            )
            if keys
        )
        raise FeatxError(
            f"--init {path} does not fit arch {arch!r}: {problems}. The file may hold another "
            "architecture's weights."
        )
    model.load_state_dict(usable, strict=False)
    return len(usable)


def backbone_blocks(model: nn.Module, head: str) -> list[str]:
    """The top-level parameterised children, in order, without the head's top-level module."""
    head_top = head.split(".")[0]
    return [
        name
        for name, child in model.named_children()
        if name != head_top and any(True for _ in child.parameters())
    ]


@dataclass(frozen=True)
class TrainablePlan:
    """Which modules train; everything else is frozen (no grad, eval mode)."""

    modules: tuple[str, ...]
    trainable_parameters: int
    total_parameters: int


def apply_strategy(model: nn.Module, head: str, strategy: str, blocks: int) -> TrainablePlan:
    if strategy not in STRATEGIES:
        raise FeatxError(f"unknown --strategy {strategy!r}; choose {', '.join(STRATEGIES)}")
    if strategy == "full":
        names: tuple[str, ...] = ("",)
    else:
        names = (head,)
        if strategy == "partial":
            available = backbone_blocks(model, head)
            if not 1 <= blocks <= len(available):
                raise FeatxError(
                    f"--blocks {blocks}: the model has {len(available)} backbone blocks "
                    f"({', '.join(available)}); pass 1..{len(available)}"
                )
            names = (*available[-blocks:], head)
    for parameter in model.parameters():
        parameter.requires_grad_(strategy == "full")
    for name in names:
        for parameter in model.get_submodule(name).parameters():
            parameter.requires_grad_(True)
    return TrainablePlan(
        modules=names,
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_parameters=sum(p.numel() for p in model.parameters()),
    )


def set_train_mode(model: nn.Module, plan: TrainablePlan) -> None:
    """Train mode for the trainable modules only; frozen ones keep their BatchNorm statistics."""
    model.eval()
    for name in plan.modules:
        model.get_submodule(name).train()


class SupervisedObjective(nn.Module):
    """Cross-entropy with label smoothing on the model's logits."""

    def __init__(self, model: nn.Module, plan: TrainablePlan, label_smoothing: float):
        super().__init__()
        self.model = model
        self.plan = plan
        self.label_smoothing = label_smoothing

    def train_mode(self) -> None:
        set_train_mode(self.model, self.plan)

    def _losses(
        self, images: torch.Tensor, labels: torch.Tensor, smoothing: float
    ) -> tuple[torch.Tensor, int]:
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        return loss, int((logits.argmax(dim=1) == labels).sum())

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self._losses(images, labels, self.label_smoothing)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Plain cross-entropy: validation loss is comparable across label-smoothing settings."""
        return self._losses(images, labels, 0.0)
