"""Parity between eager PyTorch and ONNX Runtime: figures, gates and the inputs used.

One tolerance policy for exports: per output, max-abs error, max-abs relative to the feature
scale (the largest reference magnitude) and the minimum per-row cosine similarity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from featx.data.photos import sample_photos
from featx.preprocess import reference_transform
from featx.runtime.metadata import Preprocess

FP32_MIN_COSINE = 0.99999
FP32_MAX_REL = 1e-4
FP16_MIN_COSINE = 0.999
RANDOM_BATCH = 5


@dataclass(frozen=True)
class ParityFigures:
    max_abs: float
    max_rel: float
    min_cosine: float
    rows: int


@dataclass(frozen=True)
class ParityGate:
    min_cosine: float
    max_rel: float | None

    @classmethod
    def default(cls, fp16: bool) -> ParityGate:
        return cls(FP16_MIN_COSINE, None) if fp16 else cls(FP32_MIN_COSINE, FP32_MAX_REL)

    def failures(self, name: str, figures: ParityFigures) -> list[str]:
        out = []
        if not figures.min_cosine >= self.min_cosine:
            out.append(f"{name}: min cosine {figures.min_cosine:.7f} < {self.min_cosine}")
        if self.max_rel is not None and not figures.max_rel <= self.max_rel:
            out.append(f"{name}: max-abs/scale {figures.max_rel:.3e} > {self.max_rel:.0e}")
        return out


@dataclass(frozen=True)
class ParityReport:
    gate: ParityGate
    figures: dict[str, ParityFigures]

    @property
    def failures(self) -> list[str]:
        return [msg for name, fig in self.figures.items() for msg in self.gate.failures(name, fig)]

    @property
    def passed(self) -> bool:
        return not self.failures

    def worst(self) -> ParityFigures:
        figs = list(self.figures.values())
        return ParityFigures(
            max_abs=max(f.max_abs for f in figs),
            max_rel=max(f.max_rel for f in figs),
            min_cosine=min(f.min_cosine for f in figs),
            rows=sum(f.rows for f in figs),
        )

    def to_dict(self) -> dict:
        return {
            "gate": asdict(self.gate),
            "passed": self.passed,
            **{name: asdict(fig) for name, fig in self.figures.items()},
        }


def compare(reference: np.ndarray, candidate: np.ndarray) -> ParityFigures:
    """Figures for ``candidate`` against ``reference``, both (rows, dim), computed in float64."""
    if reference.shape != candidate.shape:
        raise ValueError(
            f"shape mismatch: reference {reference.shape}, candidate {candidate.shape}"
        )
    ref = reference.astype(np.float64).reshape(len(reference), -1)
    got = candidate.astype(np.float64).reshape(len(candidate), -1)
    max_abs = float(np.abs(ref - got).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_rel = 0.0 if max_abs == 0.0 else max_abs / max(scale, np.finfo(np.float64).tiny)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    dots = (ref * got).sum(axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(got, axis=1) == 0)
    cosine = np.where(both_zero, 1.0, dots / np.where(norms == 0, 1.0, norms))
    cosine = np.where((norms == 0) & ~both_zero, 0.0, cosine)
    return ParityFigures(max_abs, max_rel, float(cosine.min()) if len(cosine) else 1.0, len(ref))


def parity_inputs(preprocess: Preprocess, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random normalised-image tensors plus real photos preprocessed by the reference path."""
    size = preprocess.crop_size
    generator = torch.Generator().manual_seed(seed)
    transform = reference_transform(preprocess)
    return {
        "random": torch.randn(RANDOM_BATCH, 3, size, size, generator=generator),
        "photos": torch.stack([transform(photo) for photo in sample_photos()]),
    }
