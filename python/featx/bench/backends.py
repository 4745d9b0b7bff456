"""Model backends: one registered extractor made ready to run one batch, per backend.

Every backend starts from the same eager fp32 feature model (random init with trained-looking
BatchNorm statistics, cut and pooled as featx-export cuts it) and the same random input batch,
so their outputs can be compared with eager fp32 and their times set side by side (the int8
backend's fidelity is its export gate's, on held-out photos: random inputs are not what it was
calibrated for). A backend that cannot run on this machine raises ``Unavailable`` with the reason.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from featx.bench.corpus import make_corpus
from featx.exporter import ExportResult
from featx.features import extractor_feature_model
from featx.fold import fold_batchnorm
from featx.models import get_extractor
from featx.models.checkpoint import save_checkpoint
from featx.runtime.errors import FeatxError
from featx.runtime.metadata import Preprocess
from featx.runtime.ort_config import cpu_session
from featx.runtime.runner import Runner
from featx.testing.models import randomize_batchnorm

INPUT_SEED = 0
INT8_CPU_ONLY = "featx's int8 files are made and gated for ONNX Runtime's CPU provider"
INT8_IMAGES = 384
"""Real-photo crops for the int8 export: featx-export's default 128 to calibrate, 256 held out."""


class Unavailable(Exception):
    """This backend cannot run here; the message says why."""


@dataclass
class Prepared:
    """One unit of work ready to time, and what it produces for the parity check."""

    run: Callable[[], object]
    images_per_run: int
    cuda_events: bool
    """Time with CUDA events (work queued on the GPU) rather than perf_counter."""
    features: np.ndarray | None
    """Features (rows, dim) of one untimed run, float32, for the parity check; None where the
    work has no features to compare (a timing-only case)."""
    prepare_s: float
    note: str = ""
    flops: float | None = None
    """Floating-point operations of one run, for TFLOP/s; None where not counted."""


class ModelAssets:
    """A registered extractor's eager feature model and, on demand, its featx ONNX export."""

    def __init__(self, arch: str, work_dir: Path):
        extractor = get_extractor(arch)
        torch.manual_seed(0)
        self.arch = arch
        self.module = randomize_batchnorm(extractor.build_model()).eval()
        self.preprocess: Preprocess = extractor.preprocess
        self.feature_model, _ = extractor_feature_model(
            extractor, self.module, self.preprocess.crop_size
        )
        self.work_dir = work_dir

    @functools.cached_property
    def onnx_path(self) -> Path:
        """The model exported by featx.export (BN folded, parity-gated), made once per run."""
        import featx

        checkpoint = save_checkpoint(self.work_dir / f"{self.arch}.pt", self.module, self.arch)
        return featx.export(checkpoint, self.work_dir / f"{self.arch}.onnx").path

    @functools.cached_property
    def int8_export(self) -> ExportResult:
        """The int8 export (featx-export --int8), calibrated and gated on the bench's real-photo
        corpus (held-out images after the calibration ones), made once per run."""
        import featx

        checkpoint = save_checkpoint(self.work_dir / f"{self.arch}.pt", self.module, self.arch)
        photos = make_corpus(self.work_dir / "calibration", count=INT8_IMAGES)
        return featx.export(
            checkpoint, self.work_dir / f"{self.arch}-int8.onnx", int8=True, calibrate=photos
        )

    @functools.cached_property
    def flops_per_image(self) -> int:
        """Floating-point operations of one image through the feature model (torch's count)."""
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            self.feature_model(self.images(1))
        return counter.get_total_flops()

    def images(self, batch_size: int) -> torch.Tensor:
        """A seeded random batch of normalised images at the model's input size."""
        generator = torch.Generator().manual_seed(INPUT_SEED)
        return torch.randn(batch_size, *self.preprocess.input_shape, generator=generator)


def prepare_model(
    backend: str, assets: ModelAssets, batch_size: int, device: str
) -> tuple[Callable[[], object], bool, str]:
    """(run one batch, whether to time it with CUDA events, a note) for ``backend``."""
    images = assets.images(batch_size)
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("no CUDA device is visible to torch on this machine")
    builders = {
        "eager": _eager,
        "eager-folded": _eager_folded,
        "eager-fp16": functools.partial(_eager_half, dtype=torch.float16),
        "eager-bf16": functools.partial(_eager_half, dtype=torch.bfloat16),
        "compile": _compiled,
        "fused": _fused,
        "ort-python": _ort_python,
        "runner": _runner,
        "int8": _int8,
    }
    return builders[backend](assets, images, device)


def features_of(output: object) -> np.ndarray:
    """A backend's output as a float32 (rows, dim) array on the host."""
    if isinstance(output, torch.Tensor):
        return output.detach().float().cpu().numpy()
    return np.asarray(output, dtype=np.float32)


def prepared(backend: str, assets: ModelAssets, batch_size: int, device: str) -> Prepared:
    """Builds the backend and runs it once untimed (compiles, allocates, gives its features)."""
    started = time.perf_counter()
    run, cuda_events, note = prepare_model(backend, assets, batch_size, device)
    features = features_of(run())
    return Prepared(
        run,
        batch_size,
        cuda_events,
        features,
        time.perf_counter() - started,
        note,
        flops=assets.flops_per_image * batch_size,
    )


def under_inference_mode(run: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``run`` as the timed work: each call under torch.inference_mode."""

    def inference() -> torch.Tensor:
        with torch.inference_mode():
            return run()

    return inference


def _torch_runner(model: nn.Module, images: torch.Tensor) -> Callable[[], torch.Tensor]:
    return under_inference_mode(lambda: model(images))


def _eager(assets: ModelAssets, images: torch.Tensor, device: str):
    model = copy.deepcopy(assets.feature_model).to(device)
    return _torch_runner(model, images.to(device)), device == "cuda", ""


def _eager_folded(assets: ModelAssets, images: torch.Tensor, device: str):
    model = copy.deepcopy(assets.feature_model)
    if not isinstance(model.body, fx.GraphModule):
        raise Unavailable("the model is not traceable by torch.fx, so nothing can be folded")
    report = fold_batchnorm(model.body)
    note = f"{len(report.folded)} BatchNorms folded"
    return _torch_runner(model.to(device), images.to(device)), device == "cuda", note


def _eager_half(assets: ModelAssets, images: torch.Tensor, device: str, dtype: torch.dtype):
    if device != "cuda":
        # CPU half-precision convolutions are emulated and slower than fp32: not a path to ship.
        raise Unavailable(f"eager {dtype} + channels_last is a GPU path; run with --device cuda")
    model = copy.deepcopy(assets.feature_model).to(device, dtype)
    model = model.to(memory_format=torch.channels_last)
    staged = images.to(device, dtype, memory_format=torch.channels_last)
    return _torch_runner(model, staged), True, "channels_last"


def _compiled(assets: ModelAssets, images: torch.Tensor, device: str):
    model = torch.compile(copy.deepcopy(assets.feature_model).to(device))
    run = _torch_runner(model, images.to(device))
    try:
        run()
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise Unavailable(
            f"torch.compile fails on this machine: {type(err).__name__}: {first_line}"
        ) from err
    return run, device == "cuda", "inductor, compiled before timing"


def _fused(assets: ModelAssets, images: torch.Tensor, device: str):
    from featx.fusion import fuse

    if device != "cuda":
        raise Unavailable("the fused Triton kernels run on CUDA; run with --device cuda")
    # fp16 NHWC: the dtype and layout the kernels are written for (issue 4's whole-model goal).
    model = copy.deepcopy(assets.feature_model).to(device, torch.float16)
    model = fuse(model.to(memory_format=torch.channels_last))
    staged = images.to(device, torch.float16, memory_format=torch.channels_last)
    return _torch_runner(model, staged), True, "fp16, channels_last"


def _ort_python(assets: ModelAssets, images: torch.Tensor, device: str):
    import onnxruntime as ort

    feed_images = images.numpy()
    if device == "cpu":
        session = cpu_session(assets.onnx_path, "float32")
        note = "CPUExecutionProvider, featx session settings"
    else:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Unavailable(
                f"this onnxruntime {ort.__version__} has no CUDA provider (install onnxruntime-gpu)"
            )
        session = ort.InferenceSession(
            str(assets.onnx_path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
        if session.get_providers()[0] != "CUDAExecutionProvider":
            raise Unavailable("onnxruntime could not start its CUDA provider on this machine")
        note = "CUDAExecutionProvider; host arrays in and out (copies timed)"
    feed = {session.get_inputs()[0].name: feed_images}
    return (lambda: session.run(None, feed)[0]), False, note


def _runner(assets: ModelAssets, images: torch.Tensor, device: str):
    try:
        runner = Runner(assets.onnx_path, device=device)
    except FeatxError as err:
        if device != "cuda":
            raise
        # On CUDA the failure is the machine's (no CUDA provider in this onnxruntime).
        raise Unavailable(str(err)) from err
    feed = images.numpy().astype(runner.input_dtype)
    return (lambda: runner.run(feed)), False, f"featx.Runner, {runner.provider}"


def _int8(assets: ModelAssets, images: torch.Tensor, device: str):
    if device != "cpu":
        raise Unavailable(INT8_CPU_ONLY)
    report = assets.int8_export.int8
    runner = Runner(assets.int8_export.path, device=device)
    note = (
        f"featx.Runner over featx-export --int8 ({report.recipe.describe()}; gate on "
        f"{report.figures.rows} held-out photos)"
    )
    return (lambda: runner.run(images.numpy())), False, note
