"""The native runner module, with ONNX Runtime's library located and loaded into it.

featx._runner links nothing from ORT (see csrc/ort_library.h): the library of the installed
onnxruntime package is found here and handed to the C++ side once per process.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

from featx.runtime.errors import ONNXRUNTIME_EXTRAS, FeatxError, MissingExtraError


def onnxruntime_library() -> Path:
    """Path of libonnxruntime inside the installed onnxruntime (or onnxruntime-gpu) package."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            f"the onnxruntime package is not installed: pip install {ONNXRUNTIME_EXTRAS}"
        )
    capi = Path(next(iter(spec.submodule_search_locations))) / "capi"
    candidates = sorted(capi.glob("libonnxruntime.so*")) + sorted(
        capi.glob("libonnxruntime*.dylib")
    )
    if not candidates:
        raise FeatxError(
            f"no ONNX Runtime shared library in {capi}; reinstall the onnxruntime package."
        )
    return candidates[0]


@functools.cache
def native() -> ModuleType:
    """featx._runner with ONNX Runtime loaded, ready to use."""
    import featx._runner as _runner

    try:
        _runner.load_onnxruntime(str(onnxruntime_library()))
    except RuntimeError as err:
        raise FeatxError(f"cannot start the native runner: {err}") from err
    return _runner
