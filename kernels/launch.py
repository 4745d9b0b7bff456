"""What every featx kernel launcher shares: where the Triton kernel runs, and input checks.

The kernels target GPUs. On a CUDA tensor the compiled Triton kernel runs. On a CPU tensor the
Triton kernel runs under Triton's interpreter when ``TRITON_INTERPRET=1`` (that is how the CPU
test suite checks the kernels themselves); otherwise the op computes the same result with its
PyTorch composition, so a fused model stays usable on CPU (parity checks, extraction).
Triton decides interpretation when a kernel is decorated, so the flag is read once, at import.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def runs_triton(tensor: torch.Tensor) -> bool:
    """Whether the Triton kernel (compiled or interpreted) handles a tensor on this device."""
    return tensor.is_cuda or (INTERPRET and tensor.device.type == "cpu")


def dot_precision(dtype: torch.dtype | str) -> str:
    """tl.dot's precision: full fp32 products for fp32 inputs (TF32's 10-bit mantissa would miss
    the fp32 tolerance); fp16/bf16 inputs multiply exactly either way."""
    return "ieee" if dtype in (torch.float32, "float32") else "tf32"


def on_device(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launches on ``tensor``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def check_tensor(op: str, name: str, tensor: torch.Tensor, dims: int) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"featx::{op}: {name} must be a tensor, got {type(tensor).__name__}")
    if tensor.dim() != dims:
        raise ValueError(
            f"featx::{op}: {name} must have {dims} dimensions, got shape {tuple(tensor.shape)}"
        )
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"featx::{op}: {name} must be float32, float16 or bfloat16, got {tensor.dtype}"
        )


def check_same(op: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Every given tensor shares ``reference``'s dtype and device (the kernels do not cast)."""
    for name, tensor in others.items():
        if tensor is None:
            continue
        if tensor.device != reference.device:
            raise ValueError(
                f"featx::{op}: {name} is on {tensor.device} but the input is on "
                f"{reference.device}; move both to one device"
            )
        if tensor.dtype != reference.dtype:
            raise TypeError(
                f"featx::{op}: {name} is {tensor.dtype} but the input is {reference.dtype}; "
                "cast them to one dtype"
            )


def pair(op: str, name: str, value: Sequence[int], minimum: int) -> tuple[int, int]:
    values = tuple(int(v) for v in value)
    if len(values) != 2 or min(values) < minimum:
        raise ValueError(
            f"featx::{op}: {name} must be two integers >= {minimum}, got {tuple(value)}"
        )
    return values
