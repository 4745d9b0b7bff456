"""featx-export --int8: static INT8 quantization of an exported fp32 model with ONNX Runtime's
QDQ tools, calibrated on the user's images through the extraction pipeline, and kept only when a
fidelity gate made for embeddings passes on held-out images.

The images named by --calibrate are listed as featx extract lists them and shuffled with a fixed
seed; the first ``calibration_size`` usable ones calibrate the activation ranges, the next
``holdout_size`` are the held-out set on which the int8 embeddings are compared with the fp32
model's: per-row cosine (min, mean) and recall@10 of the fp32 k-NN graph, what search and
dedup use embeddings for.

The recipe depends on the CPU's instruction set: without VNNI, x86's u8 x s8 multiply-add
(vpmaddubsw) saturates its 16-bit sums, so weights are quantized to 7 bits (reduce_range), as
ONNX Runtime's documentation recommends; with VNNI (and on ARM) the full 8 bits are kept.

When the all-int8 model fails its gate, a fallback keeps some multiply-add ops fp32, a growing
share of them, until the gate passes or ``max_fp32_share`` of them is reached. First kept fp32:
the ops whose activation input int8 represents worst for what keeping them costs, i.e. lowest
signal to quantization noise (dB) of that input plus 10 log10 of the activation values the op
reads and writes. An op kept fp32 costs mostly the conversions of its input and output between
int8 and fp32 (memory-bound, so the tensors' size), not its multiply-adds: ranked per
multiply-add instead, 7 of ResNet-50's 53 convolutions kept fp32 cut int8's speed-up from 2.20x
to 1.35x (early layers: few multiply-adds, large tensors), ranked per value to 1.78x
(benchmarks/int8_fallback.py). The calibrated ranges are computed once and reused by every try.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from featx.runtime.errors import FeatxError, ParityError
from featx.runtime.inputs import Inputs
from featx.runtime.instruction_set import INSTRUCTION_SETS, SATURATING, cpu_instruction_set
from featx.runtime.metadata import Preprocess
from featx.runtime.ort_config import cpu_session
from featx.runtime.preprocessed import preprocessed_batches

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
CALIBRATION_BATCH = 16
MIN_HOLDOUT = 50
"""Fewer held-out images than this make recall@10 a figure of chance."""
NEIGHBOURS = 10
SPEED_BATCH = 8
SPEED_REPEATS = 5
WORST_TENSORS = 5
DIAGNOSED_IMAGES = 2
"""Images the per-tensor comparison runs on: it keeps every activation of both models (ViT-B/16:
~1 GB an image)."""
CROWDED_COSINE = 0.99
"""Above this mean cosine between different images' fp32 embeddings, the gate's message says the
neighbour graph it checks is crowded."""
SHUFFLE_SEED = 0
MAX_FP32_SHARE = 0.5
"""The default share of the quantizable multiply-add ops the fallback may keep fp32: beyond half,
what is left of int8's speed-up is small (ResNet-50: 2.2x all int8, 1.2x with half fp32)."""
FALLBACK_STEPS = (0.25, 0.5, 1.0)
"""The fallback's tries, as fractions of ``max_fp32_share`` of the quantizable ops."""
MIN_ONNXRUNTIME = (1, 28)
"""quantize_static's calibration cache (calibrate once, quantize as often as the fallback tries)
arrived in ONNX Runtime 1.28."""


class Int8GateError(ParityError):
    """The int8 model left its fidelity gate; ``report`` holds what was measured."""

    def __init__(self, message: str, report: Int8Report):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Int8Recipe:
    """How the model is quantized (onnxruntime.quantization.quantize_static, QDQ format)."""

    instruction_set: str
    reduce_range: bool
    activations: str = "uint8"
    weights: str = "int8"
    per_channel: bool = True
    calibration: str = "minmax"
    quantized_ops: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    """Only the ops that carry the model's multiply-adds; the rest (Add, pooling, Softmax,
    LayerNorm, GELU) stay fp32 between them. Empty: every op ONNX Runtime can quantize."""
    activation_matmuls: bool = False
    """Whether MatMuls of two activations (attention's query x key and weights x value) are
    quantized too, rather than only those with a weight."""

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["quantized_ops"] = list(self.quantized_ops)
        return values

    def describe(self) -> str:
        bits = " (7-bit range)" if self.reduce_range else ""
        channels = "per-channel" if self.per_channel else "per-tensor"
        matmuls = "" if self.activation_matmuls else " (MatMuls of two activations fp32)"
        return (
            f"{self.instruction_set}: {self.activations} activations, {self.weights} "
            f"{channels} weights{bits}, {self.calibration} calibration, "
            f"{'/'.join(self.quantized_ops) or 'every op'} quantized{matmuls}"
        )


def recipe_for(instruction_set: str) -> Int8Recipe:
    """The recipe for CPUs of ``instruction_set`` (one of INSTRUCTION_SETS): 7-bit weights where
    their int8 kernels saturate (featx.runtime.instruction_set)."""
    if instruction_set not in INSTRUCTION_SETS:
        raise FeatxError(
            f"unknown int8 target {instruction_set!r}: one of {', '.join(INSTRUCTION_SETS)}"
        )
    return Int8Recipe(instruction_set, reduce_range=instruction_set in SATURATING)


@dataclass(frozen=True)
class Int8Gate:
    """What the int8 embeddings of the held-out images must keep of the fp32 ones."""

    mean_cosine: float = 0.999
    min_cosine: float = 0.99
    recall_at_10: float = 0.95

    def failures(self, figures: Int8Figures) -> list[str]:
        failed = []
        if figures.mean_cosine < self.mean_cosine:
            failed.append(f"mean cosine {figures.mean_cosine:.6f} < {self.mean_cosine}")
        if figures.min_cosine < self.min_cosine:
            failed.append(f"min cosine {figures.min_cosine:.6f} < {self.min_cosine}")
        if figures.recall_at_10 < self.recall_at_10:
            failed.append(f"recall@10 {figures.recall_at_10:.4f} < {self.recall_at_10}")
        return failed


@dataclass(frozen=True)
class Int8Figures:
    """Int8 vs fp32 embeddings of the same held-out images."""

    rows: int
    min_cosine: float
    mean_cosine: float
    recall_at_10: float
    reference_pairwise_cosine: float
    """Mean cosine between the fp32 embeddings of different images: near 1, the model hardly
    tells these images apart, and int8's rounding reorders their neighbours however small it
    is (random-init networks often do this)."""


@dataclass(frozen=True)
class FallbackTry:
    """One model the fallback measured: ``fp32_nodes`` multiply-add ops kept fp32."""

    fp32_nodes: int
    figures: Int8Figures


@dataclass
class Int8Report:
    """What --int8 did and measured; stored in the model's metadata (``featx.int8``)."""

    recipe: Int8Recipe
    gate: Int8Gate
    figures: Int8Figures
    calibration: dict[str, Any]
    fp32_images_per_second: float
    int8_images_per_second: float
    worst_tensors: list[dict[str, Any]] = field(default_factory=list)
    quantizable_nodes: int = 0
    """Multiply-add ops the recipe quantizes (Conv, Gemm, MatMuls with a weight)."""
    fp32_nodes: list[str] = field(default_factory=list)
    """Those the fallback kept fp32 in the model (the last try's when the gate failed)."""
    max_fp32_share: float = MAX_FP32_SHARE
    tries: list[FallbackTry] = field(default_factory=list)
    """Every model measured, the all-int8 one first."""

    @property
    def speedup(self) -> float:
        return self.int8_images_per_second / self.fp32_images_per_second

    def describe_fallback(self) -> str:
        if not self.fp32_nodes:
            return f"all {self.quantizable_nodes} multiply-add ops int8"
        return (
            f"{len(self.fp32_nodes)} of {self.quantizable_nodes} multiply-add ops kept fp32 "
            "(those whose inputs int8 represents worst)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.to_dict(),
            "gate": asdict(self.gate),
            "figures": asdict(self.figures),
            "passed": not self.gate.failures(self.figures),
            "calibration": self.calibration,
            "fallback": {
                "quantizable_nodes": self.quantizable_nodes,
                "max_fp32_share": self.max_fp32_share,
                "fp32_nodes": list(self.fp32_nodes),
                "tries": [
                    {"fp32_nodes": each.fp32_nodes, **_rounded_figures(each.figures)}
                    for each in self.tries
                ],
            },
            "speed": {
                "batch": SPEED_BATCH,
                "fp32_images_per_second": round(self.fp32_images_per_second, 2),
                "int8_images_per_second": round(self.int8_images_per_second, 2),
                "speedup": round(self.speedup, 3),
            },
        }


def embedding_fidelity(reference: np.ndarray, candidate: np.ndarray) -> Int8Figures:
    """Per-row cosine of ``candidate`` to ``reference`` (rows: the same images), recall@10 (the
    share of each image's 10 nearest neighbours (cosine, itself excluded) under ``reference``
    that are also among its 10 nearest under ``candidate``) and how spread ``reference`` is."""
    ref = _unit_rows(reference.astype(np.float64))
    cand = _unit_rows(candidate.astype(np.float64))
    cosine = np.sum(ref * cand, axis=1)
    k = min(NEIGHBOURS, len(ref) - 1)
    found = 0
    for neighbours_ref, neighbours_cand in zip(
        _neighbours(ref, k), _neighbours(cand, k), strict=True
    ):
        found += len(set(neighbours_ref) & set(neighbours_cand))
    return Int8Figures(
        rows=len(ref),
        min_cosine=float(cosine.min()),
        mean_cosine=float(cosine.mean()),
        recall_at_10=found / (k * len(ref)),
        reference_pairwise_cosine=float(
            (np.sum(ref @ ref.T) - len(ref)) / (len(ref) * (len(ref) - 1))
        ),
    )


def check_options(calibration_size: int, holdout_size: int, max_fp32_share: float) -> None:
    """Raises FeatxError for sizes the gate cannot work with, a share outside [0, 1] or an ONNX
    Runtime too old for the calibration cache the fallback reuses."""
    if calibration_size < 1 or holdout_size < MIN_HOLDOUT:
        raise FeatxError(
            f"--calibration-size must be >= 1 and --holdout-size >= {MIN_HOLDOUT}, got "
            f"{calibration_size} and {holdout_size}"
        )
    if not 0 <= max_fp32_share <= 1:
        raise FeatxError(f"--int8-max-fp32 is a share in [0, 1], got {max_fp32_share}")
    import onnxruntime

    installed = tuple(int(part) for part in onnxruntime.__version__.split(".")[:2])
    if installed < MIN_ONNXRUNTIME:
        wanted = ".".join(map(str, MIN_ONNXRUNTIME))
        raise FeatxError(
            f"--int8 needs onnxruntime >= {wanted} (its calibration cache); this environment "
            f"has {onnxruntime.__version__}: upgrade it (pip install -U onnxruntime, or "
            "onnxruntime-gpu where that is the one installed)"
        )


def quantize_int8(
    fp32: onnx.ModelProto,
    preprocess: Preprocess,
    images: Inputs,
    source: str,
    *,
    holdout: Inputs | None = None,
    calibration_size: int = 128,
    holdout_size: int = 256,
    gate: Int8Gate | None = None,
    recipe: Int8Recipe | None = None,
    max_fp32_share: float = MAX_FP32_SHARE,
    workers: int = 0,
    on_try: Callable[[str], None] | None = None,
) -> tuple[onnx.ModelProto, Int8Report]:
    """The int8 model of ``fp32``, calibrated on ``images`` (listed from ``source``) and checked
    on the ones after them or on ``holdout``, and what it measured. Where the all-int8 model
    leaves ``gate``, up to ``max_fp32_share`` of its multiply-add ops are kept fp32 (module
    docstring); raises Int8GateError (with the figures and the tensors that lost most) when no
    try is inside the gate. ``on_try`` hears of each fallback try before it runs."""
    gate = gate or Int8Gate()
    recipe = recipe or recipe_for(cpu_instruction_set())
    check_options(calibration_size, holdout_size, max_fp32_share)
    calibration, held_out, calibration_ids = split_images(
        images, holdout, preprocess, calibration_size, holdout_size, workers
    )
    with tempfile.TemporaryDirectory(prefix="featx-int8-") as tmp:
        quantizer = Int8Quantizer(fp32, recipe, calibration, Path(tmp))
        fp32_session = cpu_session(fp32.SerializeToString(), "float32")
        reference = embed(fp32_session, held_out)
        tries: list[FallbackTry] = []
        worst: list[dict[str, Any]] = []
        ranking: list[str] = []
        failed: list[str] = []
        for count in [0, *fallback_counts(len(quantizer.candidates), max_fp32_share)]:
            if count and on_try is not None:
                on_try(
                    f"int8 outside its gate ({', '.join(failed)}): trying with {count} of "
                    f"{len(quantizer.candidates)} multiply-add ops kept fp32"
                )
            fp32_nodes = ranking[:count]
            int8_path = quantizer.quantize(fp32_nodes)
            int8_session = cpu_session(int8_path.read_bytes(), "int8")
            figures = embedding_fidelity(reference, embed(int8_session, held_out))
            tries.append(FallbackTry(len(fp32_nodes), figures))
            failed = gate.failures(figures)
            if not failed:
                break
            if not count:
                errors = quantizer.tensor_errors(int8_path, held_out[:DIAGNOSED_IMAGES])
                worst = _worst_tensors(errors)
                ranking = quantizer.fallback_ranking(errors)
        int8 = onnx.load(str(int8_path))
        fp32_speed, int8_speed = alternating_speeds(
            fp32_session, int8_session, held_out[:SPEED_BATCH]
        )
        report = Int8Report(
            recipe=recipe,
            gate=gate,
            figures=tries[-1].figures,
            calibration={
                "images": len(calibration),
                "holdout_images": len(held_out),
                "sha256": _fingerprint(images.fingerprint, calibration_ids),
                "source": source,
            },
            fp32_images_per_second=fp32_speed,
            int8_images_per_second=int8_speed,
            worst_tensors=worst,
            quantizable_nodes=len(quantizer.candidates),
            fp32_nodes=fp32_nodes,
            max_fp32_share=max_fp32_share,
            tries=tries,
        )
    if failed:
        raise Int8GateError(_gate_message(report, failed), report)
    return int8, report


def fallback_counts(candidates: int, max_fp32_share: float) -> list[int]:
    """How many of ``candidates`` ops each fallback try keeps fp32: FALLBACK_STEPS of the
    allowed share, at least one more each time, none beyond the share."""
    allowed = math.floor(candidates * max_fp32_share + 1e-9)
    counts = sorted({min(allowed, max(1, math.ceil(allowed * step))) for step in FALLBACK_STEPS})
    return [count for count in counts if count > 0]


class Int8Quantizer:
    """ONNX Runtime's quantize_static over one prepared copy of the fp32 model, calibrated once:
    the ranges are cached in ``folder`` and every later call reuses them."""

    def __init__(
        self, fp32: onnx.ModelProto, recipe: Int8Recipe, calibration: np.ndarray, folder: Path
    ):
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.recipe = recipe
        self.calibration = calibration
        self.folder = folder
        self.fp32_path = folder / "fp32.onnx"
        self.prepared_path = folder / "prepared.onnx"
        self.cache_path = folder / "calibration.json"
        self.written = 0
        onnx.save(fp32, self.fp32_path)
        quant_pre_process(str(self.fp32_path), str(self.prepared_path), skip_symbolic_shape=True)
        self.prepared = _named_nodes(onnx.load(str(self.prepared_path)))
        onnx.save(self.prepared, self.prepared_path)
        self.weights = weight_names(self.prepared)
        quantized_ops = set(recipe.quantized_ops)
        # Attention's MatMuls of two activations, fp32 unless the recipe quantizes them.
        self.fp32_matmuls = [
            node.name
            for node in self.prepared.graph.node
            if node.op_type == "MatMul"
            and not self.weights & set(node.input)
            and not recipe.activation_matmuls
        ]
        self.candidates = [
            node
            for node in self.prepared.graph.node
            if node.op_type in ("Conv", "MatMul", "Gemm")
            and (not quantized_ops or node.op_type in quantized_ops)
            and node.name not in self.fp32_matmuls
        ]

    @functools.cached_property
    def shapes(self) -> dict[str, list[int]]:
        """Per-image shapes of the prepared model's tensors that shape inference knows (symbolic
        dimensions, the batch, count as 1); inferred only when a fallback ranks ops."""
        inferred = onnx.shape_inference.infer_shapes(self.prepared)
        shapes = {}
        values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
        for value in values:
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = [dim.dim_value if dim.HasField("dim_value") else 1 for dim in dims]
        for init in inferred.graph.initializer:
            shapes[init.name] = list(init.dims)
        return shapes

    def activation_input(self, node: onnx.NodeProto) -> str:
        """The name of ``node``'s first input that is not a weight."""
        return next((name for name in node.input if name not in self.weights), "")

    def values(self, tensor: str) -> int:
        """Values per image of ``tensor`` (0 where shape inference left its shape unknown)."""
        shape = self.shapes.get(tensor)
        return math.prod(shape[1:]) if shape else 0

    def quantize(self, fp32_nodes: list[str]) -> Path:
        """Writes the int8 model with ``fp32_nodes`` (and attention's activation MatMuls, per
        the recipe) left fp32 and returns its path."""
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        self.written += 1
        path = self.folder / f"int8-{self.written}.onnx"
        quantize_static(
            str(self.prepared_path),
            str(path),
            _BatchReader(self.calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(self.recipe.quantized_ops) or None,
            nodes_to_exclude=self.fp32_matmuls + fp32_nodes,
            per_channel=self.recipe.per_channel,
            reduce_range=self.recipe.reduce_range,
            activation_type=types[self.recipe.activations],
            weight_type=types[self.recipe.weights],
            calibrate_method=methods[self.recipe.calibration],
            calibration_cache_path=str(self.cache_path),
        )
        return path

    def tensor_errors(self, int8_path: Path, images: np.ndarray) -> dict[str, dict[str, float]]:
        """Per activation: ``qdq_err``, the signal to quantization noise ratio (dB) of its own
        int8 rounding, and ``xmodel_err``, of its int8-model value against the fp32 model's
        (ONNX Runtime's QDQ debugging tools), on ``images``."""
        from onnxruntime.quantization.qdq_loss_debug import (
            collect_activations,
            compute_activation_error,
            create_activation_matching,
            modify_model_output_intermediate_tensors,
        )

        activations = {}
        for name, path in (("fp32", self.prepared_path), ("int8", int8_path)):
            augmented = self.folder / f"{name}-augmented.onnx"
            modify_model_output_intermediate_tensors(str(path), str(augmented))
            activations[name] = collect_activations(str(augmented), _BatchReader(images))
        matching = create_activation_matching(activations["int8"], activations["fp32"])
        return {
            tensor: {kind: float(value) for kind, value in error.items()}
            for tensor, error in compute_activation_error(matching).items()
        }

    def fallback_ranking(self, errors: dict[str, dict[str, float]]) -> list[str]:
        """The quantizable ops, the first to keep fp32 first: lowest signal to quantization
        noise of their activation input for the values they read and write (module
        docstring)."""
        return self.ranking_by_input_sqnr(errors, self.values_converted)

    def ranking_by_input_sqnr(
        self, errors: dict[str, dict[str, float]], cost: Callable[[onnx.NodeProto], float]
    ) -> list[str]:
        """The quantizable ops by the signal to quantization noise (dB) of their activation
        input plus 10 log10 of ``cost(op)``, lowest first; ops whose input has no figure left
        out."""
        scored = []
        for node in self.candidates:
            sqnr = errors.get(self.activation_input(node), {}).get("qdq_err")
            if sqnr is not None:
                scored.append((sqnr + 10 * math.log10(max(cost(node), 1)), node.name))
        return [name for _, name in sorted(scored)]

    def values_converted(self, node: onnx.NodeProto) -> int:
        """Values per image ``node`` reads and writes: what keeping it fp32 converts."""
        return self.values(self.activation_input(node)) + self.values(node.output[0])


class _BatchReader:
    """What onnxruntime.quantization reads calibration batches through (its CalibrationDataReader
    protocol: ``get_next``, ``rewind``, iteration), over preprocessed images."""

    def __init__(self, images: np.ndarray):
        self.images = images
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.images):
            return None
        batch = self.images[self.start : self.start + CALIBRATION_BATCH]
        self.start += CALIBRATION_BATCH
        return {INPUT_NAME: batch}

    def rewind(self) -> None:
        self.start = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        return iter(self.get_next, None)


def split_images(
    images: Inputs,
    holdout: Inputs | None,
    preprocess: Preprocess,
    calibration_size: int,
    holdout_size: int,
    workers: int,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Calibration and held-out tensors, and the calibration images' ids: the held-out ones
    follow the calibration ones in ``images`` unless ``holdout`` names others."""
    threads = workers or os.cpu_count() or 1
    wanted = calibration_size + (holdout_size if holdout is None else 0)
    tensors, ids = _usable_images(images, wanted, preprocess, threads)
    calibration, rest = tensors[:calibration_size], tensors[calibration_size:]
    if holdout is not None:
        rest, _ = _usable_images(holdout, holdout_size, preprocess, threads)
    if len(calibration) < calibration_size or len(rest) < MIN_HOLDOUT:
        where = "--calibrate" if holdout is None else "--calibrate and --holdout"
        raise FeatxError(
            f"{where} gave {len(calibration)} calibration and {len(rest)} held-out usable "
            f"images; --int8 needs --calibration-size ({calibration_size}) of the first and at "
            f"least {MIN_HOLDOUT} of the second for its fidelity gate: give more images or a "
            "smaller --calibration-size."
        )
    return calibration, rest, ids[:calibration_size]


def _usable_images(
    listed: Inputs, count: int, preprocess: Preprocess, workers: int
) -> tuple[np.ndarray, list[str]]:
    """Up to ``count`` usable inputs of a seeded shuffle of ``listed``, preprocessed, and their
    ids."""
    order = [int(i) for i in np.random.default_rng(SHUFFLE_SEED).permutation(len(listed))]
    chosen: list[int] = []
    tensors: list[np.ndarray] = []
    batches = preprocessed_batches(listed, order, preprocess, CALIBRATION_BATCH, workers)
    for usable, tensor in batches:
        chosen.extend(usable)
        tensors.append(tensor)
        if len(chosen) >= count:
            break
    batches.close()
    if not tensors:
        return np.empty((0, *preprocess.input_shape), np.float32), []
    return np.concatenate(tensors)[:count], [listed.ids[i] for i in chosen[:count]]


def _named_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with a name on every node: ONNX Runtime's quantizer excludes nodes by name."""
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"featx_{node.op_type.lower()}_{index}"
    return model


def weight_names(model: onnx.ModelProto) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    return names | {
        out for node in model.graph.node if node.op_type == "Constant" for out in node.output
    }


def embed_file(path: Path, images: np.ndarray) -> np.ndarray:
    return embed(cpu_session(path.read_bytes(), "int8"), images)


def embed(session: Any, images: np.ndarray) -> np.ndarray:
    parts = [
        session.run([OUTPUT_NAME], {INPUT_NAME: images[start : start + CALIBRATION_BATCH]})[0]
        for start in range(0, len(images), CALIBRATION_BATCH)
    ]
    return np.concatenate(parts).astype(np.float32)


def alternating_speeds(
    fp32_session: Any, int8_session: Any, batch: np.ndarray
) -> tuple[float, float]:
    """Model-only images/s of both sessions on one small batch, timed alternately (a noisy
    machine disturbs both alike), median of SPEED_REPEATS after a warm-up run each."""
    times: dict[int, list[float]] = {0: [], 1: []}
    sessions = (fp32_session, int8_session)
    for session in sessions:
        session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    for _ in range(SPEED_REPEATS):
        for index, session in enumerate(sessions):
            started = time.perf_counter()
            session.run([OUTPUT_NAME], {INPUT_NAME: batch})
            times[index].append(time.perf_counter() - started)
    return len(batch) / statistics.median(times[0]), len(batch) / statistics.median(times[1])


def _worst_tensors(errors: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The WORST_TENSORS activations whose int8-model values lost most against the fp32 model's
    (signal to quantization noise ratio, dB)."""
    ranked = sorted(
        (error["xmodel_err"], name) for name, error in errors.items() if "xmodel_err" in error
    )
    return [{"tensor": name, "sqnr_db": round(db, 2)} for db, name in ranked[:WORST_TENSORS]]


def _gate_message(report: Int8Report, failed: list[str]) -> str:
    fig = report.figures
    worst = "; ".join(f"{t['tensor']} {t['sqnr_db']} dB" for t in report.worst_tensors)
    crowded = ""
    if fig.reference_pairwise_cosine > CROWDED_COSINE:
        crowded = (
            f" The fp32 embeddings of different images are {fig.reference_pairwise_cosine:.6f} "
            "cosine to each other on average: the model hardly tells these images apart, so "
            "int8's rounding reorders their neighbours (is it trained, and for images like "
            "these?)."
        )
    tries = "; ".join(
        f"{each.fp32_nodes} fp32: min cosine {each.figures.min_cosine:.6f}, mean "
        f"{each.figures.mean_cosine:.6f}, recall@10 {each.figures.recall_at_10:.4f}"
        for each in report.tries
    )
    return (
        f"the int8 model failed its fidelity gate on {fig.rows} held-out images: "
        f"{', '.join(failed)}. Tried, of {report.quantizable_nodes} multiply-add ops, with this "
        f"many kept fp32 (--int8-max-fp32 {report.max_fp32_share}): {tries}. Recipe "
        f"{report.recipe.describe()}. Tensors that lost most in the all-int8 model (signal to "
        f"quantization noise, lower is worse): {worst or 'none found'}.{crowded} Nothing was "
        "written. Calibrate on images like the ones you will extract (more of them, "
        "--calibration-size), allow more ops to stay fp32 (--int8-max-fp32), or keep the fp32 "
        "export."
    )


def _rounded_figures(figures: Int8Figures) -> dict[str, float]:
    return {
        "min_cosine": round(figures.min_cosine, 6),
        "mean_cosine": round(figures.mean_cosine, 6),
        "recall_at_10": round(figures.recall_at_10, 4),
    }


def _fingerprint(inputs_fingerprint: str, ids: list[str]) -> str:
    digest = hashlib.sha256(inputs_fingerprint.encode())
    for name in ids:
        digest.update(name.encode() + b"\0")
    return digest.hexdigest()


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _neighbours(unit: np.ndarray, k: int) -> np.ndarray:
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]
