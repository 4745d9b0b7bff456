"""GPU micro-benchmarks of featx's fused kernels, and of whole fused models, against PyTorch.

- conv_bn_relu at every distinct conv of ResNet-50 (224x224, batch 64 and 256): featx's kernel vs
  eager conv -> bn -> (add) -> relu on cuDNN in NCHW and in channels_last, and vs torch.compile
  of the same eager block.
- attention at ViT-B/16 shapes (B=64, H=12, L=197, D=64): featx vs F.scaled_dot_product_attention
  and vs the unfused matmul -> softmax -> matmul.
- whole models (resnet50, vit_b_16): featx.fuse(model) vs the eager model.

Every function returns plain ``KernelResult`` rows (``asdict`` gives JSON-ready dicts): timings
from CUDA events around each repetition after warm-up, median and p20/p80 in milliseconds,
TFLOP/s from the median, and the speedup over the named baseline. CUDA only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from featx.errors import FeatxError
from featx.fold import folded_weights
from featx.fuse import FusedConv2d, fuse
from featx.kernels import attention
from featx.testing.models import randomize_batchnorm

WARMUP = 10
REPETITIONS = 50
RESNET50_BATCHES = (64, 256)
IMAGE_SIZE = 224


@dataclass(frozen=True)
class KernelResult:
    """One timed variant of one benchmark case."""

    name: str
    """What was timed: ``<case>/<variant>``, e.g. ``conv 3x3 64->64 56x56 +add+relu/featx``."""
    variant: str
    shape: dict
    dtype: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    tflops: float
    speedup: float
    """Baseline median / this median (> 1: faster than the baseline)."""
    baseline: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


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
    count: int = 1

    def label(self) -> str:
        epilogue = ("+add" if self.residual else "") + ("+relu" if self.relu else "")
        return (
            f"conv {self.kernel}x{self.kernel}/s{self.stride} {self.channels}->"
            f"{self.out_channels} {self.height}x{self.width}{epilogue}"
        )


def require_cuda(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise FeatxError(
            f"kernel benchmarks run on a CUDA GPU; got device {device} "
            f"(CUDA available: {torch.cuda.is_available()})"
        )
    return device


def time_cuda(
    fn: Callable[[], object], warmup: int = WARMUP, repetitions: int = REPETITIONS
) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of ``fn`` measured with CUDA events, one pair per call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(repetitions):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    times = np.array([start.elapsed_time(end) for start, end in pairs])
    return float(np.median(times)), float(np.percentile(times, 20)), float(np.percentile(times, 80))


def resnet50_conv_shapes() -> list[ConvShape]:
    """Distinct convs of torchvision's ResNet-50 at 224x224 (with their epilogue), found by
    running featx.fuse(resnet50) once on CPU and recording each fused conv's input."""
    model = fuse(torchvision.models.resnet50().eval())
    seen: dict[ConvShape, int] = {}

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
        seen[shape] = seen.get(shape, 0) + 1

    hooks = [
        m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, FusedConv2d)
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    for hook in hooks:
        hook.remove()
    return [ConvShape(**{**asdict(shape), "count": count}) for shape, count in seen.items()]


class _EagerBlock(nn.Module):
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


def bench_conv_bn_relu(
    device: str | torch.device = "cuda",
    batches: tuple[int, ...] = RESNET50_BATCHES,
    dtype: torch.dtype = torch.float16,
    shapes: list[ConvShape] | None = None,
    compile_baseline: bool = True,
) -> list[KernelResult]:
    """featx conv_bn_relu vs eager (NCHW, channels_last) and torch.compile per conv shape.

    ``speedup`` is over eager channels_last, cuDNN's fastest layout for fp16 on tensor cores;
    ``extra["speedup_vs_nchw"]`` gives the NCHW comparison.
    """
    device = require_cuda(device)
    results = []
    for shape in shapes if shapes is not None else resnet50_conv_shapes():
        for batch in batches:
            results += _bench_conv_case(shape, batch, dtype, device, compile_baseline)
    return results


def _bench_conv_case(
    shape: ConvShape, batch: int, dtype: torch.dtype, device: torch.device, compiled: bool
) -> list[KernelResult]:
    torch.manual_seed(0)
    block = randomize_batchnorm(_EagerBlock(shape)).eval().to(device, dtype)
    fused = FusedConv2d(_folded_conv(block), shape.relu).to(device)
    x = torch.randn(batch, shape.channels, shape.height, shape.width, device=device, dtype=dtype)
    out_h = (shape.height + 2 * shape.padding - shape.kernel) // shape.stride + 1
    out_w = (shape.width + 2 * shape.padding - shape.kernel) // shape.stride + 1
    residual = (
        torch.randn(batch, shape.out_channels, out_h, out_w, device=device, dtype=dtype)
        if shape.residual
        else None
    )
    last = torch.channels_last
    x_last = x.contiguous(memory_format=last)
    residual_last = residual.contiguous(memory_format=last) if residual is not None else None
    block_last = copy.deepcopy(block).to(memory_format=last)
    variants: dict[str, Callable[[], object]] = {}
    with torch.inference_mode():
        variants["eager-nchw"] = lambda: block(x, residual)
        variants["eager-channels_last"] = lambda: block_last(x_last, residual_last)
        if compiled:
            compiled_block = torch.compile(block_last)
            variants["torch.compile"] = lambda: compiled_block(x_last, residual_last)
        variants["featx"] = lambda: fused(x_last, residual_last)
        timings = {name: time_cuda(fn) for name, fn in variants.items()}
    flops = 2 * batch * out_h * out_w * shape.out_channels * shape.channels * shape.kernel**2
    case = f"{shape.label()} bs{batch}"
    meta = {**asdict(shape), "batch": batch}
    baseline = "eager-channels_last"
    return [
        _row(
            case,
            name,
            meta,
            dtype,
            timing,
            flops,
            timings[baseline][0],
            baseline,
            {"speedup_vs_nchw": timings["eager-nchw"][0] / timing[0]},
        )
        for name, timing in timings.items()
    ]


def _folded_conv(block: _EagerBlock) -> nn.Conv2d:
    conv = copy.deepcopy(block.conv)
    weight, bias = folded_weights(block.conv.weight.detach(), None, block.bn)
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter(bias, requires_grad=False)
    return conv


def bench_attention(
    device: str | torch.device = "cuda",
    batch: int = 64,
    heads: int = 12,
    length: int = 197,
    head_dim: int = 64,
    dtype: torch.dtype = torch.float16,
) -> list[KernelResult]:
    """featx attention vs F.scaled_dot_product_attention and vs unfused matmul-softmax-matmul;
    ``speedup`` is over SDPA."""
    device = require_cuda(device)
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(batch, heads, length, head_dim, device=device, dtype=dtype) for _ in "qkv"
    )
    scale = head_dim**-0.5

    def unfused() -> torch.Tensor:
        return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v

    variants = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "unfused": unfused,
        "featx": lambda: attention(q, k, v),
    }
    with torch.inference_mode():
        timings = {name: time_cuda(fn) for name, fn in variants.items()}
    flops = 4 * batch * heads * length * length * head_dim
    meta = {"batch": batch, "heads": heads, "length": length, "head_dim": head_dim}
    case = f"attention B{batch} H{heads} L{length} D{head_dim}"
    return [
        _row(case, name, meta, dtype, timing, flops, timings["sdpa"][0], "sdpa")
        for name, timing in timings.items()
    ]


def bench_models(
    device: str | torch.device = "cuda",
    batches: tuple[int, ...] = RESNET50_BATCHES,
    dtype: torch.dtype = torch.float16,
    archs: tuple[str, ...] = ("resnet50", "vit_b_16"),
) -> list[KernelResult]:
    """Whole-model fp16 inference: featx.fuse(model) vs eager (channels_last for CNNs).
    ``extra["images_per_second"]`` is the throughput; ``speedup`` is over eager."""
    device = require_cuda(device)
    results = []
    for arch in archs:
        torch.manual_seed(0)
        model = randomize_batchnorm(getattr(torchvision.models, arch)()).eval()
        model = model.to(device, dtype).to(memory_format=torch.channels_last)
        fused = fuse(model)
        for batch in batches:
            images = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=device, dtype=dtype)
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                with FlopCounterMode(display=False) as counter:
                    model(images)
                flops = counter.get_total_flops()
                timings = {
                    "eager": time_cuda(lambda m=model, i=images: m(i), repetitions=20),
                    "featx.fuse": time_cuda(lambda m=fused, i=images: m(i), repetitions=20),
                }
            case = f"{arch} bs{batch}"
            meta = {"arch": arch, "batch": batch, "image_size": IMAGE_SIZE}
            results += [
                _row(
                    case,
                    name,
                    meta,
                    dtype,
                    timing,
                    flops,
                    timings["eager"][0],
                    "eager",
                    {"images_per_second": batch / (timing[0] / 1e3)},
                )
                for name, timing in timings.items()
            ]
    return results


def _row(
    case: str,
    variant: str,
    shape: dict,
    dtype: torch.dtype,
    timing: tuple[float, float, float],
    flops: float,
    baseline_ms: float,
    baseline: str,
    extra: dict | None = None,
) -> KernelResult:
    median, p20, p80 = timing
    return KernelResult(
        name=f"{case}/{variant}",
        variant=variant,
        shape=shape,
        dtype=str(dtype).removeprefix("torch."),
        median_ms=median,
        p20_ms=p20,
        p80_ms=p80,
        tflops=flops / (median * 1e-3) / 1e12,
        speedup=baseline_ms / median,
        baseline=baseline,
        extra=extra or {},
    )
