"""What every benchmark result row records: the device, library versions and git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import onnx
import onnxruntime
import torch
import torchvision

import featx


def environment() -> dict[str, str]:
    """Device (CPU model and cores; GPU name where CUDA is available), versions, git commit.

    ``commit`` is that of the featx source tree; where featx is installed from a wheel or a
    copy without .git, ``FEATX_COMMIT`` (scripts/gpu-check.sh sets it from the kit), else empty.
    """
    info = {"device": f"CPU: {_cpu_model()} ({os.cpu_count()} cores)"}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = str(torch.version.cuda)
    info.update(
        featx=featx.__version__,
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        onnx=onnx.__version__,
        onnxruntime=onnxruntime.__version__,
    )
    try:
        import triton
    except ImportError:
        pass
    else:
        info["triton"] = triton.__version__
    info["commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=Path(featx.__file__).parent,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip() or os.environ.get("FEATX_COMMIT", "")
    return info


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
        platform.processor(),
    )
