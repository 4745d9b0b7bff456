"""The runtime's commands as a user runs them: a real extraction that never imports the PyTorch
side, inspect and version through the native runner, and one-line errors naming the extra to
install where the PyTorch side is missing."""

import json
import re
import subprocess
import sys

import pytest
from runtime_support import PYTORCH_SIDE, cosines, featx_command, read_npy_output, run_featx_without

import featx

MISSING_TORCH = "pip install 'featx[torch]'"


def _last_json_line(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def test_extract_of_an_onnx_file_never_imports_the_pytorch_side(
    model, fixture_photos, expected_features, tmp_path
):
    result = run_featx_without((), "extract", model, fixture_photos, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert _last_json_line(result.stdout) == []
    assert f"{len(expected_features[0])} of {len(expected_features[0])} images" in result.stdout
    _, _, features = read_npy_output(tmp_path / "out")
    assert cosines(expected_features[1], features).min() >= 0.9999


@pytest.mark.parametrize(
    "args",
    [["inspect", "MODEL"], ["version"], ["--help"], ["extract", "--help"]],
    ids=["inspect", "version", "help", "extract-help"],
)
def test_runtime_commands_never_import_the_pytorch_side(model, args):
    result = run_featx_without((), *[model if a == "MODEL" else a for a in args])
    assert result.returncode == 0, result.stderr
    assert _last_json_line(result.stdout) == []


def test_inspect_reads_the_metadata_through_onnxruntime_and_refuses_foreign_onnx(model):
    result = subprocess.run(
        featx_command("inspect", model, "--json"), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    props = json.loads(result.stdout)
    assert props["featx.arch"] == "small_cnn"
    assert props["featx.input_size"] == [3, 32, 32]
    assert props["featx.embedding_dim"] == "128"
    assert props["featx.parity"]["photos"]["min_cosine"] >= 0.99999

    foreign = subprocess.run(
        featx_command("inspect", model.parent / "foreign.onnx"), capture_output=True, text=True
    )
    assert foreign.returncode == 2
    assert "no featx metadata" in foreign.stderr
    assert "Traceback" not in foreign.stderr


def test_version_names_the_native_runner_and_the_pytorch_side(tmp_path):
    result = run_featx_without(PYTORCH_SIDE, "version")
    assert result.returncode == 0, result.stderr
    assert "native runner" in result.stdout
    assert "PyTorch side:" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["export", "MODEL"],
        ["extract", "MODEL", "PHOTOS", "-o", "OUT", "--backend", "torch"],
        ["train", "--data", "PHOTOS", "--arch", "small_cnn", "-o", "OUT"],
        ["eval", "FEATURES", "--labels", "folder"],
        ["models"],
    ],
    ids=["export", "extract-torch", "train", "eval", "models"],
)
def test_a_command_whose_extra_is_missing_names_it_in_one_line(
    model, fixture_photos, tmp_path, args
):
    features = tmp_path / "features"
    featx.extract(model, fixture_photos, features, progress=False)
    names = {
        "MODEL": model,
        "PHOTOS": fixture_photos,
        "OUT": tmp_path / "out",
        "FEATURES": features,
    }
    result = run_featx_without(PYTORCH_SIDE, *[names.get(a, a) for a in args])
    assert result.returncode == 2, result.stdout + result.stderr
    assert MISSING_TORCH in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_package_face_is_lazy_and_names_the_missing_extra():
    script = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({list(PYTORCH_SIDE)!r}))\n"
        "import featx\n"
        "assert 'featx.runtime.runner' not in sys.modules\n"
        "featx.Runner, featx.extract, featx.read_metadata, featx.FeatxError\n"
        "try:\n"
        "    featx.export\n"
        "except featx.MissingExtraError as err:\n"
        "    print(err)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"featx.export needs \w+, which is not installed: {re.escape(MISSING_TORCH)}\n",
        result.stdout,
    )


def test_every_public_name_resolves():
    assert sorted(featx.__all__) == sorted([*featx._EXPORTS, "__version__"])
    runtime_names = ["Runner", "extract", "ExtractSummary", "read_metadata", "ModelMetadata"]
    for name in runtime_names:
        assert getattr(featx, name).__module__.startswith("featx.runtime")
