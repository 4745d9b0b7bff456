"""featx-export: checkpoint -> verified, self-describing ONNX file.

load -> cut at the feature layer + pool -> fold BatchNorm, drop dropout -> torch.onnx (dynamic
batch) -> parity against the unfolded eager model on random inputs and real photos -> with
--int8, static quantization and its fidelity gate on held-out images (featx.quantization) ->
metadata -> atomic write. Nothing is written unless every step passes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import fx, nn

from featx._version import __version__
from featx.features import (
    CLASSIFIER_INPUT,
    PRE_LOGITS,
    FeatureLayout,
    extractor_feature_model,
    trace_whole,
)
from featx.fold import FoldReport, fold_batchnorm
from featx.models.checkpoint import LoadedModel, load_model
from featx.options import DEFAULT_OPSET, EXPORTERS, MIN_OPSET
from featx.parity import ParityGate, ParityReport, compare, parity_inputs
from featx.quantization import (
    MAX_FP32_SHARE,
    Int8Gate,
    Int8Report,
    check_options,
    quantize_int8,
    recipe_for,
)
from featx.runtime.errors import FeatxError, ParityError
from featx.runtime.files import write_atomic
from featx.runtime.inputs import read_inputs
from featx.runtime.instruction_set import cpu_instruction_set
from featx.runtime.metadata import ModelMetadata, Preprocess
from featx.runtime.ort_config import cpu_session

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
MAX_BATCH = 4096
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ExportResult:
    """What featx-export produced and measured."""

    path: Path
    metadata: ModelMetadata
    parity: ParityReport
    fold: FoldReport
    layout: FeatureLayout
    convert_seconds: float
    total_seconds: float
    file_bytes: int
    int8: Int8Report | None = None


class HalfPrecision(nn.Module):
    """Runs ``model`` in float16; inputs and outputs stay float32 unless ``half_io``."""

    def __init__(self, model: nn.Module, half_io: bool):
        super().__init__()
        self.model = model.half()
        self.half_io = half_io

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.model(images.to(torch.float16))
        return embeddings if self.half_io else embeddings.float()


def export(
    model: str | Path,
    output: str | Path | None = None,
    *,
    arch: str | None = None,
    layer: str | None = None,
    pool: str | None = None,
    normalize: bool = False,
    fp16: bool = False,
    fp16_io: bool = False,
    opset: int = DEFAULT_OPSET,
    input_size: int | None = None,
    exporter: str = "dynamo",
    trust_pickle: bool = False,
    min_cosine: float | None = None,
    max_rel: float | None = None,
    int8: bool = False,
    calibrate: str | Path | None = None,
    holdout: str | Path | None = None,
    calibration_size: int = 128,
    holdout_size: int = 256,
    int8_gate: Int8Gate | None = None,
    int8_max_fp32: float = MAX_FP32_SHARE,
    int8_target: str | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> ExportResult:
    """Exports ``model`` (a model file) to a verified ONNX file and returns what was measured.

    With ``int8``, the file holds the model statically quantized to int8, calibrated on
    ``calibration_size`` images of ``calibrate`` (a folder, list, tar shards or parquet, as
    featx extract reads them) and checked against the fp32 export on up to ``holdout_size``
    others (after them in ``calibrate``, or of ``holdout``) by ``int8_gate``; where the all-int8
    model fails it, up to ``int8_max_fp32`` of its multiply-add ops are kept fp32, those whose
    inputs int8 represents worst (featx.quantization). The int8 recipe suits the CPUs of
    ``int8_target`` (an instruction set; default: this machine's).

    Raises FeatxError for bad input (nothing written) and ParityError when ONNX Runtime's output
    leaves the parity gate or the int8 model its fidelity gate (nothing written; the figures are
    in the message).
    """
    started = time.perf_counter()
    stage = on_stage or (lambda _: None)
    model_path = Path(model)
    out_path = Path(output) if output is not None else model_path.with_suffix(".onnx")
    _check_options(out_path, opset, exporter, input_size, fp16, fp16_io)
    if int8 and fp16:
        raise FeatxError("--int8 and --fp16 exclude each other: choose one precision.")
    if int8 and calibrate is None:
        raise FeatxError("--int8 needs --calibrate IMAGES: images like the ones you will extract.")
    if (calibrate is not None or holdout is not None) and not int8:
        raise FeatxError("--calibrate and --holdout are for --int8: add --int8, or drop them.")
    if int8_target is not None and not int8:
        raise FeatxError("--int8-target is for --int8: add --int8, or drop it.")
    # Checked and listed before the slow steps, so that a wrong value or path fails at once.
    if int8:
        check_options(calibration_size, holdout_size, int8_max_fp32)
    recipe = recipe_for(int8_target or cpu_instruction_set()) if int8 else None
    calibration_images = read_inputs(calibrate) if calibrate is not None else None
    holdout_images = read_inputs(holdout) if holdout is not None else None

    stage("loading model")
    loaded = load_model(model_path, arch=arch, trust_pickle=trust_pickle)
    extractor = loaded.extractor
    preprocess = (
        extractor.preprocess
        if input_size is None
        else Preprocess.for_crop(input_size, extractor.preprocess)
    )
    stage("selecting feature layer")
    reference, layout = extractor_feature_model(
        extractor,
        loaded.module,
        preprocess.crop_size,
        layer=layer,
        pool=pool,
        normalize=normalize,
    )

    stage("folding BatchNorm")
    inference = copy.deepcopy(reference)
    reparameterized = extractor.deploy(inference.body) if extractor.deploy else []
    if not isinstance(inference.body, fx.GraphModule):
        inference.body = trace_whole(inference.body, preprocess.crop_size) or inference.body
    if isinstance(inference.body, fx.GraphModule):
        fold = fold_batchnorm(inference.body)
    else:
        fold = FoldReport(skipped=["model is not traceable by torch.fx; nothing folded"])
    fold.reparameterized = reparameterized
    if fp16:
        inference = HalfPrecision(inference, half_io=fp16_io).eval()

    stage(f"converting to ONNX ({exporter})")
    convert_started = time.perf_counter()
    proto = _convert(inference, preprocess.crop_size, opset, exporter)
    convert_seconds = time.perf_counter() - convert_started
    if proto.ByteSize() >= _PROTOBUF_LIMIT:
        raise FeatxError(
            f"the exported model is {proto.ByteSize() / 2**30:.1f} GiB, over ONNX's 2 GiB "
            "single-file limit; export a smaller feature layer or use --fp16."
        )

    stage("checking parity with eager PyTorch")
    gate = ParityGate.default(fp16)
    gate = ParityGate(
        min_cosine if min_cosine is not None else gate.min_cosine,
        max_rel if max_rel is not None else gate.max_rel,
    )
    report = check_parity(
        reference, proto, parity_inputs(preprocess), gate, fp16=fp16, half_io=fp16_io
    )
    if not report.passed:
        raise ParityError(_parity_message(report))
    int8_report = None
    if calibration_images is not None:
        stage("quantizing to int8 and checking it on held-out images")
        proto, int8_report = quantize_int8(
            proto,
            preprocess,
            calibration_images,
            str(calibrate),
            holdout=holdout_images,
            calibration_size=calibration_size,
            holdout_size=holdout_size,
            gate=int8_gate,
            recipe=recipe,
            max_fp32_share=int8_max_fp32,
            on_try=stage,
        )

    metadata = ModelMetadata(
        featx_version=__version__,
        arch=loaded.arch,
        layer=layout.layer,
        layer_reason=embedding_reason(layout, loaded, asked=layer is not None),
        pooling=reference.pool.kind,
        normalize=normalize,
        preprocess=preprocess,
        embedding_dim=layout.embedding_dim,
        dtype="int8" if int8 else "float16" if fp16 else "float32",
        io_dtype="float16" if fp16_io else "float32",
        opset=opset,
        bn_folded=len(fold.folded),
        source={
            **loaded.source,
            "exporter": exporter,
            "torch": torch.__version__,
            **({"reparameterized": len(reparameterized)} if reparameterized else {}),
        },
        parity=report.to_dict(),
        int8=int8_report.to_dict() if int8_report is not None else {},
    )
    onnx.helper.set_model_props(proto, metadata.to_props())
    stage("writing")
    write_atomic(out_path, proto.SerializeToString())
    return ExportResult(
        path=out_path,
        metadata=metadata,
        parity=report,
        fold=fold,
        layout=layout,
        convert_seconds=convert_seconds,
        total_seconds=time.perf_counter() - started,
        file_bytes=out_path.stat().st_size,
        int8=int8_report,
    )


def embedding_reason(layout: FeatureLayout, loaded: LoadedModel, asked: bool) -> str:
    """Why the embedding is the tensor it is, as the export prints it and the metadata keeps it."""
    if layout.rule == "layer":
        return "asked for with --layer" if asked else f"the feature layer of {loaded.arch}"
    if layout.rule == "classifier":
        head = layout.layer.removeprefix(CLASSIFIER_INPUT)
        return (
            f"{loaded.arch}'s classifier {head} removed: the embedding is its input, as the "
            "model computes it"
        )
    if layout.rule == PRE_LOGITS:
        return (
            f"timm's pre-logits features of {loaded.arch} (forward_head(pre_logits=True)), what "
            "the model gives with num_classes=0"
        )
    reason = (
        f"the model's own output: featx knows no classifier of this {loaded.source['kind']} "
        "(--layer NAME, or --arch NAME for a known architecture, takes another tensor)"
    )
    if not layout.traced:
        reason += "; torch.fx cannot trace it, so it is exported whole, BatchNorm not folded"
    return reason


def check_parity(
    reference: nn.Module,
    proto: onnx.ModelProto,
    inputs: dict[str, torch.Tensor],
    gate: ParityGate,
    fp16: bool = False,
    half_io: bool = False,
) -> ParityReport:
    """Runs each input set through eager ``reference`` (fp32) and ONNX Runtime's CPU provider,
    configured as the runner configures it."""
    session = cpu_session(proto.SerializeToString(), "float16" if fp16 else "float32")
    figures = {}
    for name, batch in inputs.items():
        with torch.no_grad():
            expected = reference(batch).numpy()
        feed = batch.numpy().astype(np.float16 if half_io else np.float32)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: feed})[0]
        figures[name] = compare(expected, got.astype(np.float32))
    return ParityReport(gate, figures)


def _check_options(
    out_path: Path, opset: int, exporter: str, input_size: int | None, fp16: bool, fp16_io: bool
) -> None:
    if not out_path.parent.is_dir():
        raise FeatxError(f"output folder {out_path.parent} does not exist; create it first.")
    if out_path.is_dir():
        raise FeatxError(f"output {out_path} is a folder; give a file name such as model.onnx.")
    if opset < MIN_OPSET:
        raise FeatxError(f"--opset {opset} is too old; featx exports opset {MIN_OPSET} or newer.")
    if exporter not in EXPORTERS:
        raise FeatxError(f"unknown exporter {exporter!r}; choose {' or '.join(EXPORTERS)}.")
    if input_size is not None and input_size < 8:
        raise FeatxError(f"--input-size {input_size} is too small; use 8 pixels or more.")
    if fp16_io and not fp16:
        raise FeatxError("--fp16-io needs --fp16 (half-precision inputs feed a half model).")


def _convert(model: nn.Module, size: int, opset: int, exporter: str) -> onnx.ModelProto:
    example = torch.randn(2, 3, size, size)
    if isinstance(model, HalfPrecision) and model.half_io:
        example = example.half()
    try:
        return _run_exporter(model, example, opset, exporter)
    except Exception as err:
        op = _failing_op(err)
        where = f" at op {op}" if op else ""
        summary = f"torch.onnx ({exporter} exporter) could not export the model{where}: "
        summary += _error_line(err)
        fallback = "torchscript" if exporter == "dynamo" else "dynamo"
        try:
            _run_exporter(model, example, opset, fallback)
        except Exception:
            advice = (
                f" The {fallback} exporter fails too, so the op has no ONNX translation here: "
                "replace it in the model, or pick an earlier --layer."
            )
        else:
            advice = (
                f" The {fallback} exporter handles this model: rerun with --exporter {fallback}."
            )
        raise FeatxError(summary + "." + advice) from err


def _run_exporter(
    model: nn.Module, example: torch.Tensor, opset: int, exporter: str
) -> onnx.ModelProto:
    """One export attempt, with torch.onnx's progress chatter kept off the user's terminal."""
    chatter = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(chatter),
        contextlib.redirect_stderr(chatter),
    ):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),  # by position: forward's argument may have any name
                external_data=False,
            )
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        return onnx.load_from_string(buffer.getvalue())


_OP_PATTERNS = (
    re.compile(r"op='([\w.:]+)'"),
    re.compile(r"operator '([\w.:]+)'"),
    re.compile(r"target=torch\.ops\.([\w.]+)"),
)


def _failing_op(err: BaseException) -> str | None:
    seen: BaseException | None = err
    while seen is not None:
        for pattern in _OP_PATTERNS:
            match = pattern.search(str(seen))
            if match:
                return match.group(1).removesuffix(".default")
        seen = seen.__cause__ or seen.__context__
    return None


def _error_line(err: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    summary = re.search(r"<class '[\w.]+'>: (.+)", text)
    line = summary.group(1) if summary else (text.splitlines()[0] if text else "")
    return f"{type(err).__name__}: {line}"[:400].rstrip(".")


def _parity_message(report: ParityReport) -> str:
    rows = "; ".join(
        f"{name}: max-abs {f.max_abs:.3e}, max-abs/scale {f.max_rel:.3e}, "
        f"min cosine {f.min_cosine:.7f}"
        for name, f in report.figures.items()
    )
    return (
        "parity check failed, nothing written: ONNX Runtime's features differ from eager "
        f"PyTorch beyond the gate ({'; '.join(report.failures)}). Figures: {rows}. If the "
        "difference is expected (e.g. --fp16), loosen the gate with --min-cosine/--max-rel."
    )
