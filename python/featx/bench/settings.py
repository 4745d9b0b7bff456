"""What one `featx bench` run measures: its models, backends, batch sizes and repeat counts, and
the cases they make. Importing it costs nothing (the CLI takes its defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass

from featx.bench.cases import DEFAULT_BACKENDS, Case, build_cases, group_backends
from featx.runtime.errors import FeatxError


@dataclass(frozen=True)
class BenchSettings:
    models: tuple[str, ...] = ("resnet50",)
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    batch_sizes: tuple[int, ...] = (1, 32)
    device: str = "cpu"
    repeats: int = 10
    warmup: int = 2
    e2e_images: int = 256
    e2e_repeats: int = 3
    preprocess_images: int = 64

    def check(self) -> None:
        """Raises FeatxError for settings that cannot be measured, before anything runs."""
        import torch

        from featx.models import get_extractor

        for model in self.models:
            get_extractor(model)
        try:
            self.cases()
        except ValueError as err:
            raise FeatxError(str(err)) from err
        if self.device == "cuda" and not torch.cuda.is_available():
            raise FeatxError("--device cuda asked for, but torch sees no CUDA device here")
        if min(self.repeats, self.e2e_repeats) < 1 or self.warmup < 0:
            raise FeatxError("repeats must be >= 1 and warm-up >= 0")
        if min(self.e2e_images, self.preprocess_images) < 1:
            raise FeatxError("the image counts of the extraction cases must be >= 1")

    def cases(self) -> list[Case]:
        """Every case these settings measure (featx.bench.cases.build_cases)."""
        conv_blocks = None
        if group_backends(self.backends, "conv"):
            from featx.bench.kernels import resnet50_conv_blocks

            conv_blocks = list(resnet50_conv_blocks())
        return build_cases(
            self.models, self.backends, self.batch_sizes, self.device, conv_blocks=conv_blocks
        )

    def to_dict(self) -> dict:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in vars(self).items()
        }
