"""ONNX Runtime session settings shared by the export parity check and the runner, so that a
model is verified under the same settings it later runs with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CPU_PROVIDER = "CPUExecutionProvider"


def cpu_optimization_level(model_dtype: str) -> str:
    """Graph optimisation level for the CPU provider: "all" or "extended".

    ORT 1.31's NchwcTransformer (one of ORT_ENABLE_ALL's layout optimisations) segfaults while
    creating a session for the fp16 ViT-B/16 export (measured on x86-64 CPU; fp32 and the fp16
    CNNs are unaffected). The CPU provider runs fp16 models cast back to fp32, so layout
    optimisations gain nothing for them: they stop at "extended".
    """
    return "extended" if model_dtype == "float16" else "all"


def cpu_session(model: bytes | str | Path, model_dtype: str) -> Any:
    """An onnxruntime.InferenceSession on the CPU provider with featx's settings."""
    import onnxruntime as ort

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[cpu_optimization_level(model_dtype)]
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=[CPU_PROVIDER])
