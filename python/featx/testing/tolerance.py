"""featx's one tolerance policy for fused kernels (flash-attention's rule).

A kernel's output is compared with a float64 reference; its largest absolute error must be at
most ``FACTOR`` times the error PyTorch itself makes at the same dtype on the same inputs, plus a
small absolute floor (so an exact PyTorch result does not demand an exact kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FACTOR = 2.0
ABS_FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@dataclass(frozen=True)
class ErrorCheck:
    kernel_error: float
    pytorch_error: float
    allowed: float

    @property
    def passed(self) -> bool:
        return self.kernel_error <= self.allowed

    def __str__(self) -> str:
        return (
            f"kernel max-abs error {self.kernel_error:.3e} vs allowed {self.allowed:.3e} "
            f"({FACTOR}x PyTorch's {self.pytorch_error:.3e} + floor)"
        )


def check_error(
    kernel: torch.Tensor, pytorch: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype
) -> ErrorCheck:
    """``kernel`` and ``pytorch`` are results at ``dtype``; ``reference`` is the float64 one."""
    reference = reference.double().cpu()
    kernel_error = (kernel.double().cpu() - reference).abs().max().item()
    pytorch_error = (pytorch.double().cpu() - reference).abs().max().item()
    return ErrorCheck(kernel_error, pytorch_error, FACTOR * pytorch_error + ABS_FLOOR[dtype])


def assert_within_tolerance(
    kernel: torch.Tensor, pytorch: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype
) -> None:
    """Raises AssertionError (with the figures) when ``kernel`` breaks the policy."""
    if kernel.shape != reference.shape:
        raise AssertionError(f"shape {tuple(kernel.shape)} != {tuple(reference.shape)}")
    check = check_error(kernel, pytorch, reference, dtype)
    if not check.passed:
        raise AssertionError(str(check))
