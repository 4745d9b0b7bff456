"""Which int8 kernels ONNX Runtime runs on this CPU, and whether an int8 file's weights fit them.

On x86 without VNNI, ONNX Runtime's u8 x s8 kernels multiply with vpmaddubsw, which adds pairs of
products into saturating 16-bit lanes: weights quantized to the full 8-bit range overflow them.
featx-export --int8 quantizes weights to 7 bits (reduce_range) when it makes a file for such a
CPU, but a file made for a VNNI (or ARM) CPU keeps all 8, and run on an x86 CPU without VNNI its
embeddings are wrong: small_cnn trained on digits, min cosine to fp32 0.9995 with VNNI, 0.56 on an
emulated AMD EPYC Rome (benchmarks/int8_no_vnni.py). So such a file is refused there.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from featx.runtime.errors import FeatxError

INSTRUCTION_SETS = ("x86-vnni", "x86-avx2", "x86", "arm")
SATURATING = ("x86-avx2", "x86")
"""The instruction sets whose u8 x s8 products are summed pairwise in saturating 16-bit lanes."""


def cpu_instruction_set() -> str:
    """This CPU's int8 instruction set, as featx's recipes name them (INSTRUCTION_SETS)."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "x86-vnni"
    return "x86-avx2" if "avx2" in flags else "x86"


def overflows_here(recipe: dict[str, Any], instruction_set: str) -> bool:
    """Whether an int8 model quantized by ``recipe`` (its metadata's ``int8.recipe``) has
    weights that ``instruction_set``'s int8 kernels overflow."""
    full_range_u8s8 = (
        recipe.get("activations") == "uint8"
        and recipe.get("weights") == "int8"
        and not recipe.get("reduce_range", False)
    )
    return full_range_u8s8 and instruction_set in SATURATING


def check_int8_runs_here(int8: dict[str, Any], where: str) -> None:
    """Raises FeatxError where the int8 model at ``where`` (``int8``: its metadata's ``int8``
    entry; empty for other models) would overflow this CPU's int8 kernels."""
    recipe = int8.get("recipe", {})
    here = cpu_instruction_set()
    if recipe and overflows_here(recipe, here):
        raise FeatxError(
            f"{where} is an int8 model made for {recipe.get('instruction_set', 'another CPU')} "
            f"CPUs, whose weights use the full 8-bit range; this CPU ({here}, no VNNI) adds int8 "
            "products in saturating 16-bit lanes that such weights overflow, so its embeddings "
            "would be wrong. Export an int8 file for this kind of CPU (featx-export --int8 "
            "--int8-target x86-avx2, which every CPU runs correctly), or use the fp32 file."
        )
