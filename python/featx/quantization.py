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
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from featx.runtime.errors import FeatxError, ParityError
from featx.runtime.inputs import Inputs
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


def cpu_instruction_set() -> str:
    """The instruction set that decides the recipe: "x86-vnni", "x86-avx2", "x86" or "arm"."""
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


def recipe_for(instruction_set: str) -> Int8Recipe:
    """The default recipe on ``instruction_set`` (cpu_instruction_set)."""
    return Int8Recipe(instruction_set, reduce_range=instruction_set in ("x86-avx2", "x86"))


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

    @property
    def speedup(self) -> float:
        return self.int8_images_per_second / self.fp32_images_per_second

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.to_dict(),
            "gate": asdict(self.gate),
            "figures": asdict(self.figures),
            "passed": not self.gate.failures(self.figures),
            "calibration": self.calibration,
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


def check_sizes(calibration_size: int, holdout_size: int) -> None:
    if calibration_size < 1 or holdout_size < MIN_HOLDOUT:
        raise FeatxError(
            f"--calibration-size must be >= 1 and --holdout-size >= {MIN_HOLDOUT}, got "
            f"{calibration_size} and {holdout_size}"
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
    workers: int = 0,
) -> tuple[onnx.ModelProto, Int8Report]:
    """The int8 model of ``fp32``, calibrated on ``images`` (listed from ``source``) and checked
    on the ones after them or on ``holdout``, and what it measured; raises Int8GateError (with
    the figures and the tensors that lost most) when the held-out embeddings leave ``gate``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    gate = gate or Int8Gate()
    recipe = recipe or recipe_for(cpu_instruction_set())
    check_sizes(calibration_size, holdout_size)
    calibration, held_out, calibration_ids = _split(
        images, holdout, preprocess, calibration_size, holdout_size, workers
    )
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(prefix="featx-int8-") as tmp:
        fp32_path, prepared_path, int8_path = (
            Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx")
        )
        onnx.save(fp32, fp32_path)
        quant_pre_process(str(fp32_path), str(prepared_path), skip_symbolic_shape=True)
        kept_fp32 = [] if recipe.activation_matmuls else _activation_matmuls(prepared_path)
        quantize_static(
            str(prepared_path),
            str(int8_path),
            _BatchReader(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(recipe.quantized_ops) or None,
            nodes_to_exclude=kept_fp32,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=types[recipe.activations],
            weight_type=types[recipe.weights],
            calibrate_method=methods[recipe.calibration],
        )
        int8 = onnx.load(str(int8_path))
        fp32_session = cpu_session(fp32.SerializeToString(), "float32")
        int8_session = cpu_session(int8.SerializeToString(), "int8")
        figures = embedding_fidelity(_embed(fp32_session, held_out), _embed(int8_session, held_out))
        fp32_speed, int8_speed = _speeds(fp32_session, int8_session, held_out[:SPEED_BATCH])
        report = Int8Report(
            recipe=recipe,
            gate=gate,
            figures=figures,
            calibration={
                "images": len(calibration),
                "holdout_images": len(held_out),
                "sha256": _fingerprint(images.fingerprint, calibration_ids),
                "source": source,
            },
            fp32_images_per_second=fp32_speed,
            int8_images_per_second=int8_speed,
        )
        failed = gate.failures(figures)
        if failed:
            report.worst_tensors = _worst_tensors(prepared_path, int8_path, held_out, Path(tmp))
            raise Int8GateError(_gate_message(report, failed), report)
    return int8, report


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


def _split(
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


def _activation_matmuls(path: Path) -> list[str]:
    """The MatMul nodes of the model at ``path`` with no weight (initializer) input; unnamed
    nodes get a name there, since ONNX Runtime's quantizer excludes nodes by name."""
    model = onnx.load(str(path))
    weights = {init.name for init in model.graph.initializer}
    weights |= {
        out for node in model.graph.node if node.op_type == "Constant" for out in node.output
    }
    names = []
    renamed = False
    for index, node in enumerate(model.graph.node):
        if node.op_type == "MatMul" and not weights & set(node.input):
            if not node.name:
                node.name = f"featx_matmul_{index}"
                renamed = True
            names.append(node.name)
    if renamed:
        onnx.save(model, str(path))
    return names


def _embed(session: Any, images: np.ndarray) -> np.ndarray:
    parts = [
        session.run([OUTPUT_NAME], {INPUT_NAME: images[start : start + CALIBRATION_BATCH]})[0]
        for start in range(0, len(images), CALIBRATION_BATCH)
    ]
    return np.concatenate(parts).astype(np.float32)


def _speeds(fp32_session: Any, int8_session: Any, batch: np.ndarray) -> tuple[float, float]:
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


def _worst_tensors(
    fp32_path: Path, int8_path: Path, images: np.ndarray, tmp: Path
) -> list[dict[str, Any]]:
    """The activations whose int8 values lost most against the fp32 model's (signal to
    quantization noise ratio, dB; ONNX Runtime's QDQ debugging tools), on a few images."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    few = images[:DIAGNOSED_IMAGES]
    activations = {}
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        augmented = tmp / f"{name}-augmented.onnx"
        modify_model_output_intermediate_tensors(str(path), str(augmented))
        activations[name] = collect_activations(str(augmented), _BatchReader(few))
    matching = create_activation_matching(activations["int8"], activations["fp32"])
    errors = compute_activation_error(matching)
    ranked = sorted(
        (float(err["xmodel_err"]), name) for name, err in errors.items() if "xmodel_err" in err
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
    return (
        f"the int8 model failed its fidelity gate on {fig.rows} held-out images: "
        f"{', '.join(failed)} (min cosine {fig.min_cosine:.6f}, mean {fig.mean_cosine:.6f}, "
        f"recall@10 {fig.recall_at_10:.4f}; recipe {report.recipe.describe()}). Tensors that lost "
        f"most (signal to quantization noise, lower is worse): {worst or 'none found'}.{crowded} "
        "Nothing was written. Calibrate on images like the ones you will extract (more of them, "
        "--calibration-size), or keep the fp32 export."
    )


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
