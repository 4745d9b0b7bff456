"""Pure-PyTorch references of featx's fused ops; tests and benchmarks compare against these,
and the ops themselves compute with them on CPU when the Triton interpreter is off.

They compute in float64 by default, the precision the tolerance policy measures errors
against; pass a dtype to get PyTorch's own result at that precision (None: the inputs' dtype).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def conv_bn_relu_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    residual: torch.Tensor | None = None,
    relu: bool = True,
    dtype: torch.dtype | None = torch.float64,
) -> torch.Tensor:
    """conv2d + bias (+ residual) (+ ReLU) computed in ``dtype`` (None: the inputs' dtype)."""
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    out = F.conv2d(
        cast(x), cast(weight), cast(bias), tuple(stride), tuple(padding), tuple(dilation)
    )
    if residual is not None:
        out = out + cast(residual)
    return torch.relu(out) if relu else out


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> torch.Tensor:
    """Unfused softmax(q kᵀ · scale) v, padded keys (mask True) excluded, in ``dtype``."""
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    q, k, v = cast(q), cast(k), cast(v)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
