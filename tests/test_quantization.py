"""featx-export --int8: the fidelity gate on held-out images passes a calibration on photos,
fails a broken one (exit 1, nothing written), and a passing file's metadata holds the recipe,
the calibration set and the figures; featx extract runs the int8 file."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

import featx
from featx.bench.corpus import make_corpus
from featx.cli import export_main
from featx.quantization import Int8Gate, embedding_fidelity, fallback_counts, recipe_for
from featx.runtime.errors import FeatxError
from featx.runtime.metadata import read_metadata
from featx.runtime.shards import read_features

SIZES = {"calibration_size": 48, "holdout_size": 64}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """112 crops of real photos: 48 to calibrate, 64 held out."""
    folder = tmp_path_factory.mktemp("photos")
    make_corpus(folder, count=112, size=(96, 72))
    return folder


@pytest.fixture(scope="module")
def gray(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gray")
    for index in range(48):
        Image.new("RGB", (96, 72), (128, 128, 128)).save(folder / f"{index:03d}.jpg")
    return folder


@pytest.mark.parametrize("arch", ["small_cnn", "transformer_encoder"])
def test_an_int8_export_within_its_gate_records_recipe_calibration_and_figures(
    make_checkpoint, photos, tmp_path, arch
):
    checkpoint, _ = make_checkpoint(arch)
    result = featx.export(checkpoint, tmp_path / "int8.onnx", int8=True, calibrate=photos, **SIZES)
    metadata = read_metadata(tmp_path / "int8.onnx")
    assert metadata.dtype == "int8"
    stored = metadata.int8
    assert stored["passed"] is True
    assert stored["recipe"]["activations"] == "uint8"
    assert stored["recipe"]["per_channel"] is True
    assert stored["calibration"]["images"] == 48
    assert stored["calibration"]["holdout_images"] == 64
    assert len(stored["calibration"]["sha256"]) == 64
    figures = stored["figures"]
    assert figures["mean_cosine"] >= 0.999
    assert figures["recall_at_10"] >= 0.95
    assert figures == dataclasses.asdict(result.int8.figures)
    assert 0 < figures["reference_pairwise_cosine"] < 1
    assert stored["speed"]["int8_images_per_second"] > 0


def test_featx_extract_runs_the_int8_file_close_to_the_fp32_one(make_checkpoint, photos, tmp_path):
    checkpoint, _ = make_checkpoint("small_cnn")
    featx.export(checkpoint, tmp_path / "fp32.onnx")
    featx.export(checkpoint, tmp_path / "int8.onnx", int8=True, calibrate=photos, **SIZES)
    for name in ("fp32", "int8"):
        featx.extract(tmp_path / f"{name}.onnx", photos, tmp_path / name, progress=False)
    ids32, fp32, _ = read_features(tmp_path / "fp32")
    ids8, int8, _ = read_features(tmp_path / "int8")
    assert ids8 == ids32
    assert len(ids8) == 112
    assert embedding_fidelity(fp32, int8).min_cosine >= 0.99


def test_a_constant_calibration_set_fails_the_gate_with_exit_1_and_no_file(
    make_checkpoint, photos, gray, tmp_path, capsys
):
    checkpoint, _ = make_checkpoint("small_cnn")
    out = tmp_path / "int8.onnx"
    argv = [str(checkpoint), "-o", str(out), "--int8", "--calibrate", str(gray)]
    argv += ["--holdout", str(photos), "--calibration-size", "48", "--holdout-size", "64"]
    assert export_main(argv) == 1
    message = capsys.readouterr().err
    assert "failed its fidelity gate on 64 held-out images" in message
    assert "Tensors that lost most" in message
    assert "dB" in message
    assert "0 fp32: min cosine" in message
    assert "--int8-max-fp32 0.5" in message
    assert list(tmp_path.iterdir()) == [checkpoint]


def test_too_few_images_for_calibration_and_gate_is_a_clear_error(make_checkpoint, gray, tmp_path):
    checkpoint, _ = make_checkpoint("small_cnn")
    with pytest.raises(FeatxError, match="gave 48 calibration and 0 held-out usable images"):
        featx.export(checkpoint, tmp_path / "int8.onnx", int8=True, calibrate=gray, **SIZES)
    assert not (tmp_path / "int8.onnx").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--int8"], "--int8 needs --calibrate IMAGES"),
        (["--calibrate", "photos"], "--calibrate and --holdout are for --int8"),
        (["--int8", "--fp16", "--calibrate", "photos"], "exclude each other"),
        (["--int8", "--calibrate", "no-such-folder"], "no-such-folder"),
        (["--int8", "--calibrate", "photos", "--holdout-size", "20"], "--holdout-size >= 50"),
        (["--int8", "--calibrate", "photos", "--int8-max-fp32", "1.5"], "a share in [0, 1]"),
        (["--int8-target", "x86-avx2"], "--int8-target is for --int8"),
    ],
)
def test_bad_int8_options_exit_2_before_any_work(make_checkpoint, tmp_path, capsys, argv, message):
    checkpoint, _ = make_checkpoint("small_cnn")
    assert export_main([str(checkpoint), "-o", str(tmp_path / "m.onnx"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_an_onnxruntime_without_the_calibration_cache_is_named_before_any_work(
    make_checkpoint, photos, tmp_path, monkeypatch
):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.27.1")
    checkpoint, _ = make_checkpoint("small_cnn")
    with pytest.raises(FeatxError, match=r"needs onnxruntime >= 1\.28.*has 1\.27\.1"):
        featx.export(checkpoint, tmp_path / "int8.onnx", int8=True, calibrate=photos, **SIZES)
    assert not (tmp_path / "int8.onnx").exists()


def test_the_fallback_keeps_a_growing_share_of_the_ops_fp32_up_to_its_limit():
    assert fallback_counts(49, 0.5) == [6, 12, 24]
    assert fallback_counts(53, 0.5) == [7, 13, 26]
    assert fallback_counts(4, 0.5) == [1, 2]
    assert fallback_counts(10, 1.0) == [3, 5, 10]
    assert fallback_counts(49, 0.0) == []
    assert fallback_counts(1, 0.5) == []


def test_a_model_outside_the_gate_all_int8_passes_with_its_worst_ops_kept_fp32(
    make_checkpoint, photos, tmp_path
):
    """A gate the all-int8 model cannot meet (mean and min cosine 0.99999): the fallback keeps
    more ops fp32 until it passes (at the latest with all of them, --int8-max-fp32 1); the
    written file has exactly those ops without int8 inputs, and its metadata says which."""
    import onnx

    checkpoint, _ = make_checkpoint("transformer_encoder")
    strict = Int8Gate(mean_cosine=0.99999, min_cosine=0.99999, recall_at_10=0.95)
    out = tmp_path / "int8.onnx"
    result = featx.export(
        checkpoint, out, int8=True, calibrate=photos, int8_gate=strict, int8_max_fp32=1.0, **SIZES
    )
    fallback = read_metadata(out).int8["fallback"]
    tries = fallback["tries"]
    assert tries[0]["fp32_nodes"] == 0
    assert tries[0]["mean_cosine"] < 0.99999 or tries[0]["min_cosine"] < 0.99999
    assert len(tries) >= 2
    assert tries[-1]["fp32_nodes"] == len(fallback["fp32_nodes"]) > 0
    assert result.int8.figures.min_cosine >= 0.99999
    assert fallback["max_fp32_share"] == 1.0
    graph = onnx.load(str(out)).graph
    produced_by = {out: node.op_type for node in graph.node for out in node.output}
    int8_inputs = {
        node.name: any(produced_by.get(name) == "DequantizeLinear" for name in node.input)
        for node in graph.node
        if node.op_type in ("Conv", "MatMul", "Gemm")
    }
    kept = set(fallback["fp32_nodes"])
    assert kept <= set(int8_inputs)
    assert not any(int8_inputs[name] for name in kept)
    if len(kept) < fallback["quantizable_nodes"]:
        assert any(int8_inputs[name] for name in set(int8_inputs) - kept)


def test_the_gate_fails_what_is_below_any_of_its_bounds():
    gate = Int8Gate(mean_cosine=0.999, min_cosine=0.99, recall_at_10=0.95)
    reference = np.random.default_rng(0).normal(size=(40, 16))
    assert gate.failures(embedding_fidelity(reference, reference)) == []
    noisy = reference + np.random.default_rng(1).normal(scale=0.3, size=reference.shape)
    failed = gate.failures(embedding_fidelity(reference, noisy))
    assert any(f.startswith("mean cosine") for f in failed)
    assert any(f.startswith("recall@10") for f in failed)


def test_recall_at_10_counts_the_reference_neighbours_kept():
    """30 points along a quarter circle: each one's 10 nearest are its neighbours along it.
    Swapping the two ends' embeddings leaves those two none of their 10 (0 + 0) and costs the 5
    points next to each end one neighbour apiece (5 x 9 + 5 x 9); the other 18 keep all 10:
    (0 + 0 + 90 + 180) / 300 = 0.9."""
    angles = np.linspace(0, np.pi / 2, 30)
    reference = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert embedding_fidelity(reference, reference).recall_at_10 == 1.0
    swapped = reference.copy()
    swapped[[0, 29]] = swapped[[29, 0]]
    figures = embedding_fidelity(reference, swapped)
    assert figures.recall_at_10 == pytest.approx(0.9)
    assert figures.min_cosine == pytest.approx(0.0, abs=1e-9)


def test_a_full_range_int8_file_is_refused_on_a_cpu_without_vnni_and_an_avx2_one_runs(
    make_checkpoint, photos, tmp_path, monkeypatch, capsys
):
    """A file made for VNNI CPUs keeps 8-bit weights, which an x86 CPU without VNNI overflows:
    featx.Runner and featx extract refuse it there, before any output, naming the way out;
    the file made with --int8-target x86-avx2 (7-bit weights) runs on both."""
    from featx.cli import main

    checkpoint, _ = make_checkpoint("small_cnn")
    for target in ("x86-vnni", "x86-avx2"):
        featx.export(
            checkpoint,
            tmp_path / f"{target}.onnx",
            int8=True,
            calibrate=photos,
            int8_target=target,
            **SIZES,
        )
        recipe = read_metadata(tmp_path / f"{target}.onnx").int8["recipe"]
        assert recipe["instruction_set"] == target
        assert recipe["reduce_range"] is (target == "x86-avx2")
    monkeypatch.setattr("featx.runtime.instruction_set.cpu_instruction_set", lambda: "x86-avx2")
    with pytest.raises(FeatxError, match="--int8-target x86-avx2"):
        featx.Runner(tmp_path / "x86-vnni.onnx")
    out = tmp_path / "features"
    assert main(["extract", str(tmp_path / "x86-vnni.onnx"), str(photos), "-o", str(out)]) == 2
    assert "made for x86-vnni CPUs" in capsys.readouterr().err
    assert not out.exists()
    assert featx.Runner(tmp_path / "x86-avx2.onnx").embedding_dim == 128


def test_the_recipe_keeps_8_bit_weights_only_where_the_cpu_has_vnni():
    assert recipe_for("x86-avx2").reduce_range is True
    assert recipe_for("x86-vnni").reduce_range is False
    assert recipe_for("arm").reduce_range is False
    stored = json.loads(json.dumps(recipe_for("x86-vnni").to_dict()))
    assert stored["quantized_ops"] == ["Conv", "MatMul", "Gemm"]
    assert stored["activation_matmuls"] is False


def test_attention_matmuls_of_two_activations_stay_fp32(make_checkpoint, photos, tmp_path):
    """transformer_encoder's attention: query x key and weights x value are MatMuls of two
    activations; its linear layers' MatMuls (a weight input) are quantized."""
    import onnx

    checkpoint, _ = make_checkpoint("transformer_encoder")
    featx.export(checkpoint, tmp_path / "int8.onnx", int8=True, calibrate=photos, **SIZES)
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    produced_by = {out: node for node in graph.node for out in node.output}
    weights = {init.name for init in graph.initializer}
    dequantized, fp32 = 0, 0
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        sources = [produced_by.get(name) for name in node.input]
        if any(source is not None and source.op_type == "DequantizeLinear" for source in sources):
            dequantized += 1
        elif not weights & set(node.input):
            fp32 += 1
    assert dequantized > 0
    assert fp32 > 0


def test_a_failed_gate_on_a_crowded_embedding_set_says_the_model_hardly_tells_images_apart():
    from featx.quantization import Int8Report, _gate_message

    base = np.random.default_rng(0).normal(size=16)
    crowded = base + np.random.default_rng(1).normal(scale=1e-3, size=(60, 16))
    rounded = crowded + np.random.default_rng(2).normal(scale=1e-3, size=crowded.shape)
    figures = embedding_fidelity(crowded, rounded)
    assert figures.reference_pairwise_cosine > 0.99
    report = Int8Report(recipe_for("x86-vnni"), Int8Gate(), figures, {}, 1.0, 2.0)
    message = _gate_message(report, Int8Gate().failures(figures))
    assert "recall@10" in message
    assert "the model hardly tells these images apart" in message
