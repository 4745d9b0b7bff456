"""featx::conv_bn_relu: 2-D convolution with BatchNorm folded in, + residual, + ReLU, one kernel.

Implicit GEMM over NHWC activations: rows are output pixels (N*P*Q), columns output channels
(K), the reduction runs over the filter taps (R*S) and, inside each tap, over input channels in
BLOCK_K chunks, so the activation loads are contiguous in NHWC and the folded weight is read in
its channels_last layout (K, R, S, C). Accumulation is fp32; the epilogue adds the folded bias,
the optional residual and applies the optional ReLU before one store in the input dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from featx.kernels.launch import (
    INTERPRET,
    check_same,
    check_tensor,
    dot_precision,
    on_device,
    pair,
    runs_triton,
)

OP = "conv_bn_relu"


def conv_configs() -> list[triton.Config]:
    """Tile shapes tried by the autotuner (per problem shape, see the kernel's key).

    Under the interpreter, one large tile per problem (_prune_configs picks the widest that
    fits): its cost grows with the number of programs (ENV.md: a 256^3 matmul takes 0.014 s in
    one block, 2.9 s in 32x32 blocks), but a tile far wider than the channels multiplies numpy
    work on padding (small_cnn's 3-channel stem: 5.4 s per batch with 128-wide BLOCK_K).
    """
    if INTERPRET:
        return [
            triton.Config({"BLOCK_M": 1024, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8})
            for n in (16, 32, 64, 128, 256)
            for k in (16, 32, 64, 128)
        ]
    tiles = [
        # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages
        (128, 128, 64, 8, 3),
        (128, 128, 32, 4, 4),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (128, 256, 64, 8, 3),
        (256, 128, 64, 8, 3),
        (64, 64, 64, 4, 4),
        (128, 64, 32, 4, 4),
        (64, 64, 32, 2, 5),
        (128, 128, 16, 4, 4),
        (64, 64, 16, 4, 4),
    ]
    return [
        triton.Config(
            {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8},
            num_warps=warps,
            num_stages=stages,
        )
        for m, n, k, warps, stages in tiles
    ]


def _prune_configs(configs: list[triton.Config], named_args: dict, **_: object) -> list:
    """Drops tiles far wider than the problem: a BLOCK_K above the channel count (the stem's
    C=3) or a BLOCK_N above the output channels only multiplies masked work. Under the
    interpreter, keeps only the widest tile left."""
    channels, out_channels = named_args["C"], named_args["K"]
    widest_k = max(16, triton.next_power_of_2(channels))
    widest_n = max(16, triton.next_power_of_2(out_channels))
    kept = [
        c for c in configs if c.kwargs["BLOCK_K"] <= widest_k and c.kwargs["BLOCK_N"] <= widest_n
    ]
    if not kept:
        kept = [min(configs, key=lambda c: (c.kwargs["BLOCK_K"], c.kwargs["BLOCK_N"]))]
    if INTERPRET:
        return [max(kept, key=lambda c: (c.kwargs["BLOCK_K"], c.kwargs["BLOCK_N"]))]
    return kept


@triton.autotune(
    configs=conv_configs(),
    key=["N", "C", "H", "W", "K", "P", "Q", "R", "S", "STRIDE_H", "STRIDE_W"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit
def _conv_bn_relu_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    residual_ptr,
    out_ptr,
    N,
    C,
    H,
    W,
    K,
    P,
    Q,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_wk,
    stride_wc,
    stride_wr,
    stride_ws,
    stride_rn,
    stride_rk,
    stride_rp,
    stride_rq,
    stride_on,
    stride_ok,
    stride_op,
    stride_oq,
    STRIDE_H,
    STRIDE_W,
    PAD_H,
    PAD_W,
    DIL_H,
    DIL_W,
    R: tl.constexpr,
    S: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    RELU: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pixels = N * P * Q
    pid = tl.program_id(0)
    blocks_m = tl.cdiv(pixels, BLOCK_M)
    blocks_n = tl.cdiv(K, BLOCK_N)
    # Grouped ordering: neighbouring programs share activation rows in L2.
    per_group = GROUP_M * blocks_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_K)
    m_ok = offs_m < pixels
    n_ok = offs_n < K
    image = offs_m // (P * Q)
    pq = offs_m % (P * Q)
    p = pq // Q
    q = pq % Q

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r in range(R):
        h = p * STRIDE_H - PAD_H + r * DIL_H
        for s in range(S):
            w = q * STRIDE_W - PAD_W + s * DIL_W
            row_ok = m_ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            x_rows = x_ptr + image.to(tl.int64) * stride_xn + h * stride_xh + w * stride_xw
            w_cols = w_ptr + offs_n * stride_wk + r * stride_wr + s * stride_ws
            for c0 in range(0, C, BLOCK_K):
                c = c0 + offs_c
                c_ok = c < C
                a = tl.load(
                    x_rows[:, None] + c[None, :] * stride_xc,
                    mask=row_ok[:, None] & c_ok[None, :],
                    other=0.0,
                )
                b = tl.load(
                    w_cols[None, :] + c[:, None] * stride_wc,
                    mask=c_ok[:, None] & n_ok[None, :],
                    other=0.0,
                )
                acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tile_ok = m_ok[:, None] & n_ok[None, :]
    if HAS_RESIDUAL:
        residual = tl.load(
            residual_ptr
            + image.to(tl.int64)[:, None] * stride_rn
            + offs_n[None, :] * stride_rk
            + p[:, None] * stride_rp
            + q[:, None] * stride_rq,
            mask=tile_ok,
            other=0.0,
        )
        acc += residual.to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    out = (
        out_ptr
        + image.to(tl.int64)[:, None] * stride_on
        + offs_n[None, :] * stride_ok
        + p[:, None] * stride_op
        + q[:, None] * stride_oq
    )
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=tile_ok)


JIT_KERNEL = _conv_bn_relu_kernel.fn
"""The op's ``@triton.jit`` function (under its autotuner), for tools that compile it ahead of
time (featx.testing.gpu_compile)."""


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _checked_shape(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    residual: torch.Tensor | None,
) -> tuple[int, int, int, int]:
    """Validates the inputs and returns the output shape (N, K, P, Q)."""
    check_tensor(OP, "x", x, 4)
    check_tensor(OP, "weight", weight, 4)
    check_tensor(OP, "bias", bias, 1)
    check_same(OP, x, weight=weight, bias=bias)
    stride_h, stride_w = pair(OP, "stride", stride, 1)
    pad_h, pad_w = pair(OP, "padding", padding, 0)
    dil_h, dil_w = pair(OP, "dilation", dilation, 1)
    batch, channels, height, width = x.shape
    out_channels, weight_channels, kernel_h, kernel_w = weight.shape
    if weight_channels != channels:
        raise ValueError(
            f"featx::{OP}: weight has {weight_channels} input channels but x has {channels}; "
            "only groups=1 convolutions are fused (grouped/depthwise stay in PyTorch)"
        )
    if bias.shape[0] != out_channels:
        raise ValueError(
            f"featx::{OP}: bias has {bias.shape[0]} entries but weight has {out_channels} "
            "output channels"
        )
    out_h = output_size(height, kernel_h, stride_h, pad_h, dil_h)
    out_w = output_size(width, kernel_w, stride_w, pad_w, dil_w)
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"featx::{OP}: a {kernel_h}x{kernel_w} kernel (dilation {dil_h}x{dil_w}, padding "
            f"{pad_h}x{pad_w}) does not fit a {height}x{width} input"
        )
    shape = (batch, out_channels, out_h, out_w)
    if residual is not None:
        check_tensor(OP, "residual", residual, 4)
        check_same(OP, x, residual=residual)
        if tuple(residual.shape) != shape:
            raise ValueError(
                f"featx::{OP}: residual must have the output's shape {shape}, got "
                f"{tuple(residual.shape)}"
            )
    return shape


def _empty_output(x: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


@torch.library.custom_op("featx::conv_bn_relu", mutates_args=())
def _conv_bn_relu_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    residual: torch.Tensor | None,
    relu: bool,
) -> torch.Tensor:
    """Checks the inputs, allocates the channels_last output and launches the kernel (or, on CPU
    without the Triton interpreter, computes the same thing with PyTorch ops)."""
    shape = _checked_shape(x, weight, bias, stride, padding, dilation, residual)
    if not runs_triton(x):
        # PyTorch's CPU conv at the inputs' dtype, the epilogue in place. PyTorch keeps a
        # channels_last input's layout, so from the second fused conv on this is no copy.
        out = torch.nn.functional.conv2d(
            x, weight, bias, tuple(stride), tuple(padding), tuple(dilation)
        )
        if residual is not None:
            out.add_(residual)
        if relu:
            out.relu_()
        return out.contiguous(memory_format=torch.channels_last)

    out = _empty_output(x, shape)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = weight.contiguous(memory_format=torch.channels_last)
    bias = bias.contiguous()
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    residual_arg = residual if residual is not None else out
    pixels = batch * shape[2] * shape[3]

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(pixels, meta["BLOCK_M"]) * triton.cdiv(out_channels, meta["BLOCK_N"]),)

    with on_device(x):
        _conv_bn_relu_kernel[grid](
            x,
            weight,
            bias,
            residual_arg,
            out,
            batch,
            channels,
            height,
            width,
            out_channels,
            shape[2],
            shape[3],
            *x.stride(),
            *weight.stride(),
            *residual_arg.stride(),
            *out.stride(),
            *stride,
            *padding,
            *dilation,
            R=kernel_h,
            S=kernel_w,
            HAS_RESIDUAL=residual is not None,
            RELU=relu,
            DOT_PRECISION=dot_precision(x.dtype),
        )
    return out


@_conv_bn_relu_op.register_fake
def _(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    residual: torch.Tensor | None,
    relu: bool,
) -> torch.Tensor:
    shape = _checked_shape(x, weight, bias, stride, padding, dilation, residual)
    return _empty_output(x, shape)


def conv_bn_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    residual: torch.Tensor | None = None,
    relu: bool = True,
) -> torch.Tensor:
    """``relu(conv2d(x, weight) + bias [+ residual])`` in one kernel; BatchNorm must already be
    folded into ``weight`` and ``bias`` (featx.fold.folded_weights). x (N, C, H, W) in any
    memory format (channels_last is native), weight (K, C, R, S), bias (K,), residual (N, K, P,
    Q). Returns (N, K, P, Q) in channels_last memory format."""
    return torch.ops.featx.conv_bn_relu(
        x, weight, bias, list(stride), list(padding), list(dilation), residual, relu
    )
