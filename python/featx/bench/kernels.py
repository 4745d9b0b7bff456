"""The kernel-level cases of the harness: featx's fused ops against what PyTorch runs (GPU).

- ``conv`` rows: every distinct conv-BN(-add)(-ReLU) block of torchvision's ResNet-50 at
  224x224, in float16: featx::conv_bn_relu on NHWC (``featx``) against eager conv -> bn -> (add)
  -> relu on cuDNN in channels_last (``eager-channels_last``, the reference: cuDNN's fastest
  layout for fp16 on tensor cores) and in NCHW (``eager-nchw``), and torch.compile of the
  channels_last block (``compile``).
- ``attention`` rows: ViT-B/16's attention (12 heads, 197 tokens, head dim 64) in float16:
  featx::attention (``featx``) against F.scaled_dot_product_attention (``sdpa``, the reference)
  and the unfused matmul -> softmax -> matmul (``unfused``).

Whole fused models are the ``fused`` backend of the ``model`` kind (featx.bench.backends).
Each preparer returns a ``Prepared`` whose run launches the op once (timed with CUDA events),
whose features are the op's output (one row per image, for the parity check against the
reference) and whose ``flops`` give TFLOP/s.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from featx.bench import cases
from featx.bench.backends import Prepared, Unavailable, features_of, under_inference_mode
from featx.fold import folded_layer
from featx.fusion import FusedConv2d, fuse
from featx.kernels import attention
from featx.testing.models import randomize_batchnorm
from featx.testing.references import attention_ref

IMAGE_SIZE = 224
KERNEL_DTYPE = getattr(torch, cases.KERNEL_DTYPE)


@dataclass(frozen=True)
class ConvShape:
    """One distinct convolution of a model, with what follows it in the fused block."""

    channels: int
    height: int
    width: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    residual: bool
    relu: bool

    def label(self) -> str:
        """A stable, readable case name (no ``/``: case ids are ``/``-joined)."""
        epilogue = ("+add" if self.residual else "") + ("+relu" if self.relu else "")
        return (
            f"{self.kernel}x{self.kernel}s{self.stride} {self.channels}-{self.out_channels} "
            f"{self.height}x{self.width}{epilogue}"
        )

    def output_size(self) -> tuple[int, int]:
        return tuple(
            (size + 2 * self.padding - self.kernel) // self.stride + 1
            for size in (self.height, self.width)
        )

    def flops(self, batch: int) -> int:
        out_h, out_w = self.output_size()
        return 2 * batch * out_h * out_w * self.out_channels * self.channels * self.kernel**2


@functools.cache
def resnet50_conv_blocks() -> dict[str, ConvShape]:
    """Distinct conv blocks of ResNet-50 at 224x224 by label, in network order: what featx.fuse
    made of each conv, recorded from a forward pass on the meta device (shapes only, no math)."""
    model = fuse(torchvision.models.resnet50().eval()).to("meta")
    blocks: dict[str, ConvShape] = {}

    def record(module: FusedConv2d, args: tuple) -> None:
        x = args[0]
        shape = ConvShape(
            channels=x.shape[1],
            height=x.shape[2],
            width=x.shape[3],
            out_channels=module.weight.shape[0],
            kernel=module.weight.shape[2],
            stride=module.stride[0],
            padding=module.padding[0],
            residual=len(args) > 1 and args[1] is not None,
            relu=module.relu,
        )
        blocks.setdefault(shape.label(), shape)

    hooks = [
        m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, FusedConv2d)
    ]
    with torch.no_grad():
        model(torch.empty(1, 3, IMAGE_SIZE, IMAGE_SIZE, device="meta"))
    for hook in hooks:
        hook.remove()
    return blocks


class EagerConvBlock(nn.Module):
    """What PyTorch runs without featx: conv -> bn -> (+ residual) -> (relu)."""

    def __init__(self, shape: ConvShape):
        super().__init__()
        self.conv = nn.Conv2d(
            shape.channels,
            shape.out_channels,
            shape.kernel,
            stride=shape.stride,
            padding=shape.padding,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(shape.out_channels)
        self.relu = shape.relu

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        out = self.bn(self.conv(x))
        if residual is not None:
            out = out + residual
        return F.relu(out) if self.relu else out


def _require_cuda(device: str) -> torch.device:
    if device != "cuda" or not torch.cuda.is_available():
        raise Unavailable("the kernel cases run on a CUDA GPU; run with --device cuda on one")
    return torch.device(device)


def _timed_once(
    run: Callable[[], torch.Tensor], batch: int, flops: int, started: float, note: str
) -> Prepared:
    """Runs the op once untimed (compiles, autotunes) and wraps it for the harness."""
    run = under_inference_mode(run)
    features = features_of(run()).reshape(batch, -1)
    return Prepared(
        run=run,
        images_per_run=batch,
        cuda_events=True,
        features=features,
        prepare_s=time.perf_counter() - started,
        note=note,
        flops=flops,
    )


def prepare_conv(backend: str, label: str, batch: int, device: str) -> Prepared:
    """One ResNet-50 conv block (by ``label``) at ``batch`` through ``backend``, float16."""
    started = time.perf_counter()
    target = _require_cuda(device)
    shape = resnet50_conv_blocks()[label]
    torch.manual_seed(0)
    block = randomize_batchnorm(EagerConvBlock(shape)).eval().to(target, KERNEL_DTYPE)
    on_target = {"device": target, "dtype": KERNEL_DTYPE}
    x = torch.randn(batch, shape.channels, shape.height, shape.width, **on_target)
    residual = None
    if shape.residual:
        residual = torch.randn(batch, shape.out_channels, *shape.output_size(), **on_target)
    last = torch.channels_last
    x_last = x.contiguous(memory_format=last)
    residual_last = residual.contiguous(memory_format=last) if residual is not None else None
    if backend == "eager-nchw":
        run, note = (lambda: block(x, residual)), "cuDNN, NCHW"
    elif backend == "eager-channels_last":
        block_last = copy.deepcopy(block).to(memory_format=last)
        run, note = (lambda: block_last(x_last, residual_last)), "cuDNN, channels_last"
    elif backend == "compile":
        compiled = torch.compile(copy.deepcopy(block).to(memory_format=last))
        run, note = (lambda: compiled(x_last, residual_last)), "inductor, channels_last"
    elif backend == "featx":
        fused = FusedConv2d(folded_layer(block.conv, block.bn), shape.relu).to(target)
        run, note = (lambda: fused(x_last, residual_last)), "featx::conv_bn_relu, NHWC, BN folded"
    else:
        raise ValueError(f"unknown conv backend {backend!r}")
    return _timed_once(run, batch, shape.flops(batch), started, note)


def prepare_attention(backend: str, batch: int, device: str) -> Prepared:
    """ViT-B/16's attention at ``batch`` through ``backend``, float16."""
    started = time.perf_counter()
    target = _require_cuda(device)
    heads, length, head_dim = (cases.ATTENTION_SHAPE[k] for k in ("heads", "length", "head_dim"))
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(batch, heads, length, head_dim, device=target, dtype=KERNEL_DTYPE)
        for _ in "qkv"
    )
    runs = {
        "sdpa": (lambda: F.scaled_dot_product_attention(q, k, v), "F.scaled_dot_product_attention"),
        "unfused": (lambda: attention_ref(q, k, v, dtype=None), "matmul -> softmax -> matmul"),
        "featx": (lambda: attention(q, k, v), "featx::attention, online softmax"),
    }
    if backend not in runs:
        raise ValueError(f"unknown attention backend {backend!r}")
    run, note = runs[backend]
    flops = 4 * batch * heads * length * length * head_dim
    return _timed_once(run, batch, flops, started, note)
