"""featx::attention: fused non-causal attention forward (flash-style online softmax).

Each program owns BLOCK_M queries of one (batch, head) and streams the keys and values in
BLOCK_N blocks, keeping a running max and normaliser so the (L, L) score matrix never reaches
memory. Head dims that are not powers of two (40, 80) are padded to BLOCK_D with masked loads;
padded keys (key_padding_mask True, or beyond L) get a score of -inf.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from featx.kernels.launch import (
    INTERPRET,
    check_same,
    check_tensor,
    dot_precision,
    on_device,
    runs_triton,
)

OP = "attention"
MAX_HEAD_DIM = 256
LOG2_E = 1.4426950408889634


def attention_configs() -> list[triton.Config]:
    """Tile shapes tried by the autotuner per (sequence length, head dim); one large tile under
    the interpreter, whose cost grows with the number of programs."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 256, "BLOCK_N": 256})]
    tiles = [
        # BLOCK_M, BLOCK_N, warps, stages
        (128, 64, 4, 3),
        (128, 64, 8, 3),
        (128, 128, 8, 3),
        (64, 64, 4, 4),
        (64, 32, 4, 4),
        (128, 32, 4, 4),
    ]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)
        for m, n, warps, stages in tiles
    ]


@triton.autotune(configs=attention_configs(), key=["L_Q", "L_K", "BLOCK_D", "HAS_MASK"])
@triton.jit
def _attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    out_ptr,
    qk_scale,
    HEADS,
    L_Q,
    L_K,
    D,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_mb,
    stride_mn,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    HAS_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = (pid_bh // HEADS).to(tl.int64)
    head = (pid_bh % HEADS).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    m_ok = offs_m < L_Q

    q = tl.load(
        q_ptr
        + batch * stride_qb
        + head * stride_qh
        + offs_m[:, None] * stride_qm
        + offs_d[None, :] * stride_qd,
        mask=m_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    k_base = k_ptr + batch * stride_kb + head * stride_kh
    v_base = v_ptr + batch * stride_vb + head * stride_vh

    row_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(0, L_K, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < L_K
        k = tl.load(
            k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
            mask=n_ok[None, :] & d_ok[:, None],
            other=0.0,
        )
        scores = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
        keep = n_ok
        if HAS_MASK:
            padded = tl.load(mask_ptr + batch * stride_mb + offs_n * stride_mn, mask=n_ok, other=1)
            keep = keep & (padded == 0)
        scores = tl.where(keep[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        # Rows whose keys so far are all padded keep max -inf: shift by 0 so exp2 gives 0, not NaN.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        probs = tl.exp2(scores - shift[:, None])
        rescale = tl.exp2(row_max - shift)
        row_sum = row_sum * rescale + tl.sum(probs, 1)
        v = tl.load(
            v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
            mask=n_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        acc = acc * rescale[:, None]
        acc = tl.dot(probs.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        row_max = new_max

    out = acc / row_sum[:, None]
    tl.store(
        out_ptr
        + batch * stride_ob
        + head * stride_oh
        + offs_m[:, None] * stride_om
        + offs_d[None, :] * stride_od,
        out.to(out_ptr.dtype.element_ty),
        mask=m_ok[:, None] & d_ok[None, :],
    )


JIT_KERNEL = _attention_kernel.fn
"""The op's ``@triton.jit`` function (under its autotuner), for tools that compile it ahead of
time (featx.testing.gpu_compile)."""


def _check(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None
) -> None:
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        check_tensor(OP, name, tensor, 4)
    check_same(OP, q, k=k, v=v)
    batch, heads, _, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(
            f"featx::{OP}: k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if (k.shape[0], k.shape[1], k.shape[3]) != (batch, heads, head_dim):
        raise ValueError(
            f"featx::{OP}: q {tuple(q.shape)} and k {tuple(k.shape)} must share batch, heads "
            "and head dim (B, H, L, D)"
        )
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"featx::{OP}: head dim must be 1..{MAX_HEAD_DIM}, got {head_dim}")
    if q.shape[2] < 1 or k.shape[2] < 1:
        raise ValueError(f"featx::{OP}: sequences must be non-empty, got q {tuple(q.shape)}")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(
                f"featx::{OP}: key_padding_mask must be bool (True = padded key), got "
                f"{key_padding_mask.dtype}"
            )
        if tuple(key_padding_mask.shape) != (batch, k.shape[2]):
            raise ValueError(
                f"featx::{OP}: key_padding_mask must have shape (B, L_k) = "
                f"{(batch, k.shape[2])}, got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(
                f"featx::{OP}: key_padding_mask is on {key_padding_mask.device} but q is on "
                f"{q.device}"
            )


def head_block(head_dim: int) -> int:
    """The kernel's head-dim tile: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(head_dim))


@torch.library.custom_op("featx::attention", mutates_args=())
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Checks the inputs, allocates the output and launches the kernel (or, on CPU without the
    Triton interpreter, computes the same thing with PyTorch's scaled_dot_product_attention)."""
    _check(q, k, v, key_padding_mask)
    batch, heads, length, head_dim = q.shape
    scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if not runs_triton(q):
        keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        return out.copy_(F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale))

    mask = key_padding_mask.view(torch.uint8) if key_padding_mask is not None else out
    mask_strides = mask.stride()[:2] if key_padding_mask is not None else (0, 0)
    block_d = head_block(head_dim)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(length, meta["BLOCK_M"]), batch * heads)

    with on_device(q):
        _attention_kernel[grid](
            q,
            k,
            v,
            mask,
            out,
            scale * LOG2_E,
            heads,
            length,
            k.shape[2],
            head_dim,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *mask_strides,
            *out.stride(),
            HAS_MASK=key_padding_mask is not None,
            DOT_PRECISION=dot_precision(q.dtype),
            BLOCK_D=block_d,
        )
    return out


@_attention_op.register_fake
def _(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    _check(q, k, v, key_padding_mask)
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ · scale) v over (B, H, L, D) tensors, non-causal; ``key_padding_mask`` (B, L)
    bool marks keys to ignore (True = padded, as in nn.MultiheadAttention); ``scale`` defaults
    to 1/sqrt(D). Returns (B, H, L, D)."""
    return torch.ops.featx.attention(q, k, v, key_padding_mask, scale)
