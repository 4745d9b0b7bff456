"""Standard-ONNX translations of featx's custom ops, for torch.onnx's dynamo exporter.

A fused model (featx.fuse) calls torch.ops.featx.*; ONNX Runtime knows nothing of them, so the
exporter rewrites each call into the ops it stands for: Conv (+ Add) (+ Relu) for conv_bn_relu,
MatMul / Softmax / MatMul (with a Where for the key padding mask) for attention. The exported
file is then the same graph an unfused export gives, and runs anywhere ONNX Runtime does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from onnxscript import opset18 as op

import featx.kernels  # noqa: F401  (registers torch.ops.featx.*)


def conv_bn_relu_onnx(
    x: object,
    weight: object,
    bias: object,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    residual: object = None,
    relu: bool = True,
) -> object:
    out = op.Conv(
        x,
        weight,
        bias,
        strides=list(stride),
        pads=[padding[0], padding[1], padding[0], padding[1]],
        dilations=list(dilation),
    )
    if residual is not None:
        out = op.Add(out, residual)
    return op.Relu(out) if relu else out


def attention_onnx(
    q: object,
    k: object,
    v: object,
    key_padding_mask: object = None,
    scale: float | None = None,
) -> object:
    if scale is None:
        head_dim = op.CastLike(op.Shape(q, start=-1), q)
        scale_value = op.Reciprocal(op.Sqrt(head_dim))
    else:
        scale_value = op.CastLike(op.Constant(value_float=scale), q)
    scores = op.Mul(op.MatMul(q, op.Transpose(k, perm=[0, 1, 3, 2])), scale_value)
    if key_padding_mask is not None:
        padded = op.Unsqueeze(key_padding_mask, op.Constant(value_ints=[1, 2]))
        scores = op.Where(padded, op.CastLike(op.Constant(value_float=float("-inf")), q), scores)
    return op.MatMul(op.Softmax(scores, axis=-1), v)


def custom_translation_table() -> dict[Callable, Callable]:
    """torch.onnx.export(..., dynamo=True, custom_translation_table=custom_translation_table())."""
    return {
        torch.ops.featx.conv_bn_relu.default: conv_bn_relu_onnx,
        torch.ops.featx.attention.default: attention_onnx,
    }
