"""Compiles featx's Triton kernels for a CUDA architecture on a machine without a GPU.

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, not whether they
compile: layouts, ``tl.dot`` shape rules, register and shared-memory limits only show in the
real compiler. Triton compiles ahead of time to a cubin with the ptxas it ships, given a target,
so the CPU test suite checks that too (tests/test_kernels.py). Run as a module, in a process
where ``TRITON_INTERPRET`` is unset (Triton fixes interpretation when a kernel is defined):

    python -m featx.testing.gpu_compile [--arch 90]

prints one JSON object per variant: what was compiled, its shared memory, or the error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

from featx.kernels.attention import JIT_KERNEL as ATTENTION_JIT
from featx.kernels.attention import head_block
from featx.kernels.conv_bn_relu import JIT_KERNEL as CONV_BN_RELU_JIT
from featx.kernels.launch import INTERPRET, dot_precision

TRITON_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
SHARED_MEMORY_BYTES = {80: 163 * 1024, 90: 227 * 1024}
"""Largest dynamic shared memory per block (A100 sm_80, H100/H200 sm_90)."""


@dataclass(frozen=True)
class Variant:
    """One specialisation of one kernel: dtype, compile-time constants and a tile config."""

    op: str
    dtype: str
    constants: dict
    tile: dict
    num_warps: int
    num_stages: int

    def label(self) -> str:
        shown = {**self.constants, **self.tile}
        return f"{self.op} {self.dtype} " + " ".join(f"{k}={v}" for k, v in shown.items())


def _conv(dtype: str, kernel: int, residual: bool, tile: tuple[int, ...]) -> Variant:
    block_m, block_n, block_k, warps, stages = tile
    return Variant(
        "conv_bn_relu",
        dtype,
        {
            "R": kernel,
            "S": kernel,
            "HAS_RESIDUAL": residual,
            "RELU": True,
            "DOT_PRECISION": dot_precision(dtype),
        },
        {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8},
        warps,
        stages,
    )


def _attention(dtype: str, head_dim: int, mask: bool, tile: tuple[int, ...]) -> Variant:
    block_m, block_n, warps, stages = tile
    return Variant(
        "attention",
        dtype,
        {
            "HAS_MASK": mask,
            "DOT_PRECISION": dot_precision(dtype),
            "BLOCK_D": head_block(head_dim),
        },
        {"BLOCK_M": block_m, "BLOCK_N": block_n},
        warps,
        stages,
    )


VARIANTS = (
    # The conv tile with the most shared memory, ResNet's 3x3 with its residual, fp16.
    _conv("float16", 3, True, (128, 256, 64, 8, 3)),
    _conv("bfloat16", 1, False, (128, 128, 64, 8, 3)),
    _conv("float32", 7, False, (64, 64, 32, 2, 5)),
    _attention("float16", 64, True, (128, 128, 8, 3)),
    _attention("bfloat16", 80, False, (128, 64, 8, 3)),
    _attention("float32", 40, True, (64, 32, 4, 4)),
    # The largest head dim the launcher accepts, on the smallest tile the autotuner tries.
    _attention("float16", 256, False, (64, 32, 4, 4)),
)


def _kernel(op: str) -> object:
    """The op's triton.JITFunction (under its autotuner)."""
    kernels = {"conv_bn_relu": CONV_BN_RELU_JIT, "attention": ATTENTION_JIT}
    return kernels[op]


def compile_variant(variant: Variant, arch: int) -> dict:
    """Compiles one variant to a cubin for ``sm_{arch}``; the result row says how it went."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit = _kernel(variant.op)
    element = "*" + TRITON_DTYPES[variant.dtype]
    constants = {**variant.constants, **variant.tile}
    signature = {}
    for param in jit.params:
        if param.is_constexpr:
            signature[param.name] = "constexpr"
        elif param.name == "mask_ptr":
            signature[param.name] = "*u8"
        elif param.name.endswith("_ptr"):
            signature[param.name] = element
        elif param.name == "qk_scale":
            signature[param.name] = "fp32"
        else:
            signature[param.name] = "i32"
    row = {"variant": variant.label(), "arch": arch}
    started = time.perf_counter()
    try:
        compiled = triton.compile(
            ASTSource(fn=jit, signature=signature, constexprs=constants),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": variant.num_warps, "num_stages": variant.num_stages},
        )
    except Exception as err:  # the row carries any compiler failure to the caller
        return {**row, "ok": False, "error": f"{type(err).__name__}: {err}"}
    shared = int(compiled.metadata.shared)
    return {
        **row,
        "ok": shared <= SHARED_MEMORY_BYTES[arch],
        "shared_bytes": shared,
        "shared_limit": SHARED_MEMORY_BYTES[arch],
        "cubin_bytes": len(compiled.asm["cubin"]),
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, choices=sorted(SHARED_MEMORY_BYTES), default=90)
    args = parser.parse_args(argv)
    if INTERPRET:
        print("unset TRITON_INTERPRET: the interpreter replaces the compiler", file=sys.stderr)
        return 2
    rows = [compile_variant(variant, args.arch) for variant in VARIANTS]
    for row in rows:
        print(json.dumps(row))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
