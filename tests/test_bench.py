import copy
import json

import numpy as np
import pytest
from rich.console import Console

from featx.bench.backends import Prepared
from featx.bench.cases import Case, build_cases
from featx.bench.compare import compare_results, matching_cases, regression_gate
from featx.bench.run import Bench
from featx.bench.settings import BenchSettings
from featx.bench.timing import Timing
from featx.cli import main
from featx.runtime.errors import FeatxError

ENV = {"device": "CPU: Test CPU (2 cores)", "torch": "x", "commit": "abc"}


def _row(case_id, rate, status="ok", reason=""):
    return {
        "id": case_id,
        "status": status,
        "reason": reason,
        "images_per_s": rate if status == "ok" else None,
    }


def _result(rates, env=ENV):
    return {"environment": env, "rows": [_row(case, rate) for case, rate in rates.items()]}


OLD = _result(
    {"model/resnet50/eager/float32/bs1/cpu": 10.0, "model/resnet50/runner/float32/bs1/cpu": 20.0}
)


def _verdicts(gate):
    return {verdict.case: verdict.verdict for verdict in gate.verdicts}


def test_gate_fails_on_a_synthetic_slower_result():
    slower = _result(
        {
            "model/resnet50/eager/float32/bs1/cpu": 10.0,
            "model/resnet50/runner/float32/bs1/cpu": 15.0,
        }
    )
    remeasured = []

    def remeasure(case_id):
        remeasured.append(case_id)
        return _row(case_id, 15.5)

    gate = regression_gate(OLD, slower, 0.10, remeasure=remeasure, attempts=2)
    assert not gate.passed
    assert _verdicts(gate) == {
        "model/resnet50/eager/float32/bs1/cpu": "ok",
        "model/resnet50/runner/float32/bs1/cpu": "regressed",
    }
    # Re-measured twice before failing; only the regressed case.
    assert remeasured == ["model/resnet50/runner/float32/bs1/cpu"] * 2
    assert gate.failures[0].rates == [15.0, 15.5, 15.5]


def test_gate_passes_a_result_within_the_threshold():
    within = _result(
        {"model/resnet50/eager/float32/bs1/cpu": 9.2, "model/resnet50/runner/float32/bs1/cpu": 25.0}
    )
    gate = regression_gate(OLD, within, 0.10, remeasure=pytest.fail)
    assert gate.passed
    assert _verdicts(gate) == {
        "model/resnet50/eager/float32/bs1/cpu": "ok",
        "model/resnet50/runner/float32/bs1/cpu": "improved",
    }


def test_gate_passes_a_noisy_measurement_that_recovers_on_remeasure():
    noisy = _result(
        {"model/resnet50/eager/float32/bs1/cpu": 5.0, "model/resnet50/runner/float32/bs1/cpu": 20.0}
    )
    again = iter([8.5, 9.8, 10.0])
    gate = regression_gate(
        OLD, noisy, 0.10, remeasure=lambda case: _row(case, next(again)), attempts=3
    )
    assert gate.passed
    verdict = gate.verdicts[0]
    assert verdict.verdict == "recovered"
    assert verdict.rates == [5.0, 8.5, 9.8]  # stopped at the first measurement within 10%


def test_gate_threshold_is_a_strict_fraction():
    at_edge = _result({"model/resnet50/eager/float32/bs1/cpu": 9.0})
    assert (
        _verdicts(regression_gate(OLD, at_edge, 0.10))["model/resnet50/eager/float32/bs1/cpu"]
        == "ok"
    )
    below = _result({"model/resnet50/eager/float32/bs1/cpu": 8.99})
    assert not regression_gate(OLD, below, 0.10).passed
    assert regression_gate(OLD, below, 0.15).passed


def test_gate_fails_a_backend_that_now_fails_parity_and_reports_case_changes():
    new = {
        "environment": ENV,
        "rows": [
            _row("model/resnet50/runner/float32/bs1/cpu", None, "failing-parity", "min cosine 0.9"),
            _row("model/resnet50/compile/float32/bs1/cpu", 30.0),
        ],
    }
    verdicts = {v.case: v for v in compare_results(OLD, new, 0.10)}
    assert verdicts["model/resnet50/runner/float32/bs1/cpu"].verdict == "parity-failed"
    assert verdicts["model/resnet50/compile/float32/bs1/cpu"].verdict == "new"
    assert verdicts["model/resnet50/eager/float32/bs1/cpu"].verdict == "not-measured"
    assert not regression_gate(OLD, new, 0.10).passed


def test_comparing_across_devices_or_without_common_cases_is_refused():
    other = {**ENV, "device": "CPU: Other CPU (64 cores)"}
    with pytest.raises(FeatxError, match=r"Other CPU.*same device"):
        matching_cases(OLD, other, ["model/resnet50/eager/float32/bs1/cpu"])
    with pytest.raises(FeatxError, match="no timed case"):
        matching_cases(OLD, ENV, ["model/vgg16/eager/float32/bs1/cpu"])
    assert matching_cases(OLD, ENV, ["model/resnet50/runner/float32/bs1/cpu", "x"]) == [
        "model/resnet50/runner/float32/bs1/cpu"
    ]


def test_timing_quantiles():
    timing = Timing.from_seconds([5.0, 1.0, 4.0, 2.0, 3.0, 6.0], "perf_counter")
    assert timing.median_s == 3.5
    assert timing.p20_s == pytest.approx(2.0)
    assert timing.p80_s == pytest.approx(5.0)
    single = Timing.from_seconds([0.25], "cuda-events")
    assert single.median_s == single.p20_s == single.p80_s == 0.25


def test_cases_put_references_first_and_reject_unknown_backends():
    cases = build_cases(["resnet18"], ["runner", "fused", "preprocess"], [1, 8], "cpu")
    model_cases = [c for c in cases if c.kind == "model"]
    # fused (fp16) needs both eager fp32 and eager fp16 as references, measured before it.
    assert [c.backend for c in model_cases[:4]] == ["eager", "eager-fp16", "fused", "runner"]
    assert [c.backend for c in cases if c.kind == "preprocess"] == ["pil", "cpp"]
    assert len({c.id for c in cases}) == len(cases)
    with pytest.raises(ValueError, match="unknown backend"):
        build_cases(["resnet18"], ["tensorrt"], [1], "cpu")


def test_one_row_of_a_kind_comes_with_its_reference():
    blocks = ["7x7s2 3-64 224x224+relu", "1x1s1 64-256 56x56"]
    cases = build_cases(
        ["resnet50"], ["conv:featx", "attention:featx"], [64], "cuda", conv_blocks=blocks
    )
    assert [(c.kind, c.backend) for c in cases] == [
        ("conv", "eager-channels_last"),
        ("conv", "featx"),
        ("conv", "eager-channels_last"),
        ("conv", "featx"),
        ("attention", "sdpa"),
        ("attention", "featx"),
    ]
    assert BenchSettings(backends=("conv:eager-nchw",), device="cuda").cases()[0].kind == "conv"
    with pytest.raises(ValueError, match="KIND:BACKEND"):
        build_cases(["resnet50"], ["conv:cudnn"], [64], "cuda", conv_blocks=blocks)


def test_bench_reports_drifting_features_as_failing_parity(tmp_path):
    settings = BenchSettings(models=("small_cnn",), batch_sizes=(2,), repeats=1, warmup=0)
    bench = Bench(settings, tmp_path)
    reference = Case("model", "small_cnn", "eager", 2, "cpu")
    features = bench.reference_features(reference)
    candidate = Case("model", "small_cnn", "runner", 2, "cpu")
    exact = Prepared(lambda: None, 2, False, features.copy(), 0.0)
    assert bench.parity(candidate, exact)["passed"]
    drifted = features + 1e-2 * np.abs(features).max() * np.random.default_rng(0).standard_normal(
        features.shape
    ).astype(np.float32)
    parity = bench.parity(candidate, Prepared(lambda: None, 2, False, drifted, 0.0))
    assert not parity["passed"]
    failures = " ".join(parity["failures"])
    assert "runner: min cosine" in failures
    assert "max-abs/scale" in failures


BACKENDS = ("eager", "eager-folded", "eager-fp16", "fused", "ort-python", "runner", "int8")
BACKENDS += ("extract-e2e", "preprocess")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One real `featx bench` on a tiny model: every kind of case, two timed repeats each."""
    out = tmp_path_factory.mktemp("bench")
    argv = [
        "bench",
        "--model", "small_cnn",
        "--backends", ",".join(BACKENDS),
        "--batch-sizes", "2",
        "--repeats", "2",
        "--e2e-images", "6",
        "--e2e-repeats", "1",
        "--preprocess-images", "3",
        "--output", str(out / "result.json"),
        "--plot", str(out / "result.png"),
    ]  # fmt: skip
    assert main(argv) == 0
    return out, argv


def test_bench_cli_writes_result_json_and_plot(small_run):
    out, _ = small_run
    document = json.loads((out / "result.json").read_text())
    for key in ("device", "torch", "onnxruntime", "commit"):
        assert key in document["environment"]
    rows = {row["id"]: row for row in document["rows"]}
    timed = [
        "model/small_cnn/eager/float32/bs2/cpu",
        "model/small_cnn/eager-folded/float32/bs2/cpu",
        "model/small_cnn/ort-python/float32/bs2/cpu",
        "model/small_cnn/runner/float32/bs2/cpu",
        "model/small_cnn/int8/int8/bs2/cpu",
        "extract-e2e/small_cnn/eager/float32/bs2/cpu",
        "extract-e2e/small_cnn/featx/float32/bs2/cpu",
        "extract-e2e/small_cnn/featx-int8/float32/bs2/cpu",
        "extract-e2e/small_cnn/featx-tar/float32/bs2/cpu",
        "extract-e2e/small_cnn/featx-parquet/float32/bs2/cpu",
        "extract-e2e/small_cnn/featx-half-png/float32/bs2/cpu",
        "preprocess/resnet50/pil/float32/bs1/cpu",
        "preprocess/resnet50/cpp/float32/bs1/cpu",
    ]
    for case in timed:
        row = rows[case]
        assert row["status"] == "ok", row
        assert row["timing"]["repeats"] == (1 if row["kind"] == "extract-e2e" else 2)
        assert row["timing"]["p20_s"] <= row["timing"]["median_s"] <= row["timing"]["p80_s"]
        assert row["images_per_s"] == pytest.approx(
            row["images_per_run"] / row["timing"]["median_s"]
        )
        if row["backend"] in ("eager", "pil"):
            assert row["parity"] is None
            assert row["speedup_vs_reference"] == 1.0
        else:
            assert row["parity"]["passed"]
            kind, model, _, dtype, batch, device = case.split("/")
            backend = "eager" if kind != "preprocess" else "pil"
            dtype = "float32" if kind == "model" else dtype
            reference = rows["/".join((kind, model, backend, dtype, batch, device))]
            assert row["speedup_vs_reference"] == pytest.approx(
                row["images_per_s"] / reference["images_per_s"]
            )
    # The int8 row's fidelity is its export gate's, on 256 held-out photos.
    int8_parity = rows["model/small_cnn/int8/int8/bs2/cpu"]["parity"]
    assert int8_parity["rows"] == 256
    assert int8_parity["recall_at_10"] >= int8_parity["gate"]["recall_at_10"]
    assert 0 <= int8_parity["fp32_ops"] <= int8_parity["quantizable_ops"] // 2
    # The C++ preprocessing is bit-identical to PIL's.
    assert rows["preprocess/resnet50/cpp/float32/bs1/cpu"]["parity"]["max_abs"] == 0.0
    assert rows["model/small_cnn/eager-fp16/float16/bs2/cpu"]["status"] == "unavailable"
    assert "--device cuda" in rows["model/small_cnn/eager-fp16/float16/bs2/cpu"]["reason"]
    assert rows["model/small_cnn/fused/float16/bs2/cpu"]["status"] == "unavailable"
    assert (out / "result.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_bench_cli_compare_exits_1_on_a_synthetic_slower_baseline(small_run, tmp_path):
    out, argv = small_run
    baseline = json.loads((out / "result.json").read_text())
    impossible = copy.deepcopy(baseline)
    for row in impossible["rows"]:
        if row["images_per_s"]:
            row["images_per_s"] = 1e9  # far beyond anything this machine can do
    old = tmp_path / "old.json"
    old.write_text(json.dumps(impossible))
    argv = [*argv[: argv.index("--output")], "--backends", "runner", "--compare", str(old)]
    argv += ["--output", str(tmp_path / "new.json")]
    assert main(argv) == 1
    gate = json.loads((tmp_path / "new.json").read_text())["gate"]
    assert not gate["passed"]
    regressed = [v for v in gate["verdicts"] if v["verdict"] == "regressed"]
    assert {v["case"] for v in regressed} == {
        "model/small_cnn/eager/float32/bs2/cpu",
        "model/small_cnn/runner/float32/bs2/cpu",
    }
    assert all(len(v["rates"]) == 3 for v in regressed)  # first measurement + 2 re-measurements


def test_bench_cli_refuses_a_baseline_from_another_device(small_run, tmp_path, capsys):
    out, argv = small_run
    baseline = json.loads((out / "result.json").read_text())
    baseline["environment"]["device"] = "CPU: Some Other CPU (96 cores)"
    old = tmp_path / "old.json"
    old.write_text(json.dumps(baseline))
    target = tmp_path / "new.json"
    argv = [*argv[: argv.index("--output")], "--compare", str(old), "--output", str(target)]
    assert main(argv) == 2
    assert "Some Other CPU" in capsys.readouterr().err
    assert not target.exists()


def test_bench_table_marks_failing_parity(capsys):
    case = Case("model", "resnet50", "compile", 1, "cpu")
    row = {
        **case.to_dict(),
        "status": "failing-parity",
        "reason": "compile: min cosine 0.9000000 < 0.99999",
        "note": "",
        "timing": None,
        "images_per_s": None,
        "speedup_vs_reference": None,
        "speedup_vs_same_dtype": None,
        "parity": {"min_cosine": 0.9, "max_rel": 0.3},
    }
    from featx.bench.report import print_table

    print_table({"environment": ENV, "rows": [row]}, Console(width=200))
    text = capsys.readouterr().out
    assert "failing-parity" in text
    assert "min cosine 0.9000000" in text


def test_kernel_cases_cover_resnet50_conv_blocks_and_vit_attention():
    from featx.bench.kernels import resnet50_conv_blocks

    blocks = resnet50_conv_blocks()
    # 53 convs, of which these distinct blocks; each conv3 of a bottleneck stage adds the
    # identity before its ReLU, the downsample convs end at their BatchNorm.
    assert "7x7s2 3-64 224x224+relu" in blocks
    assert "1x1s1 64-256 56x56+add+relu" in blocks
    assert "1x1s1 64-256 56x56" in blocks
    assert "3x3s2 512-512 14x14+relu" in blocks
    assert sum(shape.residual for shape in blocks.values()) == 4
    cases = build_cases(
        ["resnet50"], ["conv", "attention"], [64, 256], "cuda", conv_blocks=list(blocks)
    )
    conv = [case for case in cases if case.kind == "conv"]
    assert len(conv) == len(blocks) * 2 * 4
    assert {case.dtype for case in cases} == {"float16"}
    for case in conv:
        assert case.reference() == Case(
            "conv", case.model, "eager-channels_last", case.batch_size, "cuda", "float16"
        )
    attention = [case for case in cases if case.kind == "attention"]
    assert [case.backend for case in attention[:3]] == ["sdpa", "unfused", "featx"]
    assert len({case.id for case in cases}) == len(cases)


def test_kernel_cases_are_unavailable_without_a_gpu(tmp_path):
    from featx.bench.backends import Unavailable
    from featx.bench.kernels import prepare_attention, prepare_conv

    with pytest.raises(Unavailable, match="CUDA GPU"):
        prepare_attention("featx", 2, "cpu")
    with pytest.raises(Unavailable, match="CUDA GPU"):
        prepare_conv("featx", "7x7s2 3-64 224x224+relu", 2, "cpu")
    bench = Bench(BenchSettings(), tmp_path)
    row = bench.measure(Case("attention", "vit_b_16 H12 L197 D64", "featx", 2, "cpu", "float16"))
    assert row["status"] == "unavailable"
    assert "CUDA GPU" in row["reason"]


@pytest.mark.gpu
def test_kernel_cases_time_and_pass_parity_on_a_gpu(tmp_path):
    bench = Bench(BenchSettings(device="cuda", repeats=3, warmup=1), tmp_path)
    cases = [
        Case("conv", "3x3s1 64-64 56x56+relu", backend, 8, "cuda", "float16")
        for backend in ("eager-channels_last", "eager-nchw", "featx")
    ] + [
        Case("attention", "vit_b_16 H12 L197 D64", backend, 2, "cuda", "float16")
        for backend in ("sdpa", "unfused", "featx")
    ]
    for case in cases:
        row = bench.measure(case)
        assert row["status"] == "ok", row["reason"]
        assert row["tflops"] > 0
        if case.backend not in ("eager-channels_last", "sdpa"):
            assert row["parity"]["passed"]


def test_an_int8_model_outside_its_gate_is_a_failing_parity_row(tmp_path, monkeypatch):
    """A gate no model passes (recall@10 > 1): the int8 export fails, and the bench reports the
    row as failing parity with the gate's figures instead of stopping."""
    from featx.quantization import Int8Gate

    monkeypatch.setattr(Int8Gate.__init__, "__defaults__", (0.999, 0.99, 1.01))
    bench = Bench(BenchSettings(models=("small_cnn",), batch_sizes=(2,)), tmp_path)
    row = bench.measure(Case("model", "small_cnn", "int8", 2, "cpu", "int8"))
    assert row["status"] == "failing-parity"
    assert row["reason"].startswith("int8 gate: recall@10")
    assert row["parity"]["rows"] == 256
    assert not row["parity"]["passed"]
    assert row["timing"] is None
