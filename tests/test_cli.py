"""featx / featx-export command lines: results, and every bad input failing cleanly."""

import json
import subprocess
import sys

import onnx
import pytest
import torch
from torch import nn

from featx.cli import export_main, main
from featx.models import get_extractor, list_extractors


class DistanceFeatures(nn.Module):
    """Distances to fixed prototypes through torch.cdist, which the dynamo exporter cannot
    translate but TorchScript can. The prototypes lie far from the inputs, so the distances are
    well conditioned and both exporters' arithmetic agrees within the fp32 gate."""

    def __init__(self):
        super().__init__()
        self.prototypes = nn.Parameter(
            torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) * 5
        )

    def forward(self, images):
        return torch.cdist(images.mean(dim=(2, 3)), self.prototypes)


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def _fails_cleanly(capsys, folder, argv, code=2, entry=export_main):
    """Runs the command; asserts its exit code, that nothing was written, and returns stderr."""
    before = _files(folder)
    assert entry(argv) == code
    assert _files(folder) == before
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert err.count("\n") == 1  # one paragraph
    return " ".join(err.split())


def test_missing_file(tmp_path, capsys):
    err = _fails_cleanly(capsys, tmp_path, [str(tmp_path / "absent.pt")])
    assert "no such file" in err
    assert "absent.pt" in err


def test_file_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    err = _fails_cleanly(capsys, tmp_path, [str(tmp_path / "notes.pt")])
    assert "is not a PyTorch checkpoint" in err
    assert "torch.save" in err


def test_unknown_arch_suggests_the_closest_names(tmp_path, capsys):
    torch.save(get_extractor("resnet18").build_model().state_dict(), tmp_path / "w.pt")
    err = _fails_cleanly(capsys, tmp_path, [str(tmp_path / "w.pt"), "--arch", "resnet19"])
    assert "unknown architecture 'resnet19'" in err
    assert "resnet18" in err


def test_state_dict_without_arch_asks_for_it(tmp_path, capsys):
    torch.save(get_extractor("small_cnn").build_model().state_dict(), tmp_path / "w.pt")
    err = _fails_cleanly(capsys, tmp_path, [str(tmp_path / "w.pt")])
    assert "pass --arch NAME" in err


def test_state_dict_for_another_arch_names_the_keys(tmp_path, capsys):
    torch.save(get_extractor("resnet18").build_model().state_dict(), tmp_path / "w.pt")
    err = _fails_cleanly(capsys, tmp_path, [str(tmp_path / "w.pt"), "--arch", "resnet34"])
    assert "does not fit arch 'resnet34'" in err
    assert "missing keys: layer1.2.conv1.weight" in err


def test_unknown_layer_lists_nearby_valid_names(make_checkpoint, tmp_path, capsys):
    checkpoint, _ = make_checkpoint("resnet18")
    err = _fails_cleanly(capsys, tmp_path, [str(checkpoint), "--layer", "layer5"])
    assert "layer 'layer5' is not in the model" in err
    assert "layer4" in err
    assert "featx layers" in err


def test_pooling_that_does_not_fit_the_layer(make_checkpoint, tmp_path, capsys):
    checkpoint, _ = make_checkpoint("resnet18")
    err = _fails_cleanly(capsys, tmp_path, [str(checkpoint), "--pool", "cls"])
    assert "pooling 'cls'" in err
    assert "feature maps" in err


def test_pickled_module_needs_trust_pickle(tmp_path, capsys):
    torch.save(get_extractor("small_cnn").build_model(), tmp_path / "whole.pt")
    err = _fails_cleanly(capsys, tmp_path, [str(tmp_path / "whole.pt")])
    assert "pickled Python objects" in err
    assert "--trust-pickle" in err


def test_pt2_needs_trust_pickle_and_a_dynamic_batch(tmp_path, capsys):
    model = get_extractor("small_cnn").build_model().eval()
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),))
    torch.export.save(program, tmp_path / "fixed.pt2")
    err = _fails_cleanly(capsys, tmp_path, [str(tmp_path / "fixed.pt2")])
    assert "torch.export program" in err
    assert "--trust-pickle" in err
    err = _fails_cleanly(capsys, tmp_path, [str(tmp_path / "fixed.pt2"), "--trust-pickle"])
    assert "fixed shape (2, 3, 32, 32)" in err
    assert "dynamic batch" in err


def test_export_failure_names_the_op_and_the_exporter_that_works(tmp_path, capsys):
    torch.save(DistanceFeatures(), tmp_path / "cdist.pt")
    argv = [str(tmp_path / "cdist.pt"), "--trust-pickle", "--input-size", "8"]
    err = _fails_cleanly(capsys, tmp_path, argv)
    assert "aten._cdist_forward" in err
    assert "rerun with --exporter torchscript" in err

    assert export_main([*argv, "--exporter", "torchscript"]) == 0
    assert (tmp_path / "cdist.onnx").is_file()


def test_parity_failure_exits_1_and_writes_nothing(make_checkpoint, tmp_path, capsys):
    checkpoint, _ = make_checkpoint("resnet18")
    err = _fails_cleanly(capsys, tmp_path, [str(checkpoint), "--max-rel", "1e-12"], code=1)
    assert "parity check failed, nothing written" in err
    assert "max-abs/scale" in err
    assert "min cosine" in err


def test_missing_output_folder(make_checkpoint, tmp_path, capsys):
    checkpoint, _ = make_checkpoint("small_cnn")
    err = _fails_cleanly(capsys, tmp_path, [str(checkpoint), "-o", str(tmp_path / "no/x.onnx")])
    assert "does not exist" in err


def test_inspect_prints_the_metadata_and_refuses_foreign_onnx(make_checkpoint, tmp_path, capsys):
    checkpoint, _ = make_checkpoint("small_cnn")
    assert export_main([str(checkpoint), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parity"]["passed"]
    assert summary["bn_folded"] == 3

    assert main(["inspect", summary["output"], "--json"]) == 0
    props = json.loads(capsys.readouterr().out)
    assert props["featx.arch"] == "small_cnn"
    assert props["featx.input_size"] == [3, 32, 32]
    assert props["featx.mean"] == [0.5, 0.5, 0.5]
    assert props["featx.parity"]["photos"]["min_cosine"] >= 0.99999

    foreign = onnx.load(summary["output"])
    del foreign.metadata_props[:]
    onnx.save(foreign, tmp_path / "foreign.onnx")
    err = _fails_cleanly(capsys, tmp_path, ["inspect", str(tmp_path / "foreign.onnx")], entry=main)
    assert "no featx metadata" in err


def test_models_and_layers_commands(capsys):
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in listed] == list_extractors()
    assert main(["layers", "resnet18"]) == 0
    names = capsys.readouterr().out.split()
    assert {"layer4", "layer4.1.relu_1", "avgpool", "fc"} <= set(names)


@pytest.mark.parametrize("script", ["featx-export", "featx"])
def test_console_scripts_are_installed(script, tmp_path):
    argv = [script, "--help"] if script == "featx-export" else [script, "version"]
    bindir = __import__("pathlib").Path(sys.executable).parent
    result = subprocess.run([str(bindir / argv[0]), *argv[1:]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (
        ("--trust-pickle" in result.stdout)
        if script == "featx-export"
        else ("native runner" in result.stdout)
    )
