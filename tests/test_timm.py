"""timm models as a first-class source: the exported embedding is timm's pre-logits features,
equal to the model built with ``num_classes=0``; the preprocessing is timm's own eval transform;
every way a timm model arrives (``--arch timm:NAME`` state_dict, training checkpoint, hub
folder, pickled module) and the errors around them."""

import argparse
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import featx
from featx import _runner
from featx.cli import main
from featx.models import get_extractor
from featx.parity import FP16_MIN_COSINE, FP32_MAX_REL, FP32_MIN_COSINE
from featx.runtime.errors import FeatxError, MissingExtraError
from featx.runtime.pipeline import spec_dict
from featx.runtime.shards import read_features
from featx.testing.images import parity_photos
from featx.testing.models import TIMM_ARCHS, randomize_batchnorm

timm = pytest.importorskip("timm")

DEFAULT_ARCHS = list(TIMM_ARCHS)[:6]
"""The representative half that runs in the default suite."""
SLOW_ARCHS = list(TIMM_ARCHS)[6:]
ARCHS = DEFAULT_ARCHS + [pytest.param(a, marks=pytest.mark.slow) for a in SLOW_ARCHS]
BATCH = 3


def _random_timm_model(name):
    torch.manual_seed(0)
    return randomize_batchnorm(timm.create_model(name, pretrained=False)).eval()


def _pre_logits_oracle(name, model):
    """The model as timm builds it with num_classes=0, holding the same weights."""
    oracle = timm.create_model(name, pretrained=False, num_classes=0).eval()
    missing, _ = oracle.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    return oracle


def _images(size):
    return torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(7))


def _figures(expected, actual):
    expected, actual = expected.astype(np.float64), actual.astype(np.float64)
    cosine = (expected * actual).sum(1) / (
        np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    )
    return float(cosine.min()), float(np.abs(expected - actual).max() / np.abs(expected).max())


def _export_state_dict(name, model, tmp_path, **options):
    weights = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    return featx.export(weights, tmp_path / f"{name}.onnx", arch=f"timm:{name}", **options)


@pytest.mark.parametrize("name", ARCHS)
def test_embedding_is_timm_num_classes_0_output(name, tmp_path):
    model = _random_timm_model(name)
    result = _export_state_dict(name, model, tmp_path)
    size = result.metadata.preprocess.crop_size
    images = _images(size)
    with torch.no_grad():
        expected = _pre_logits_oracle(name, model)(images).numpy()
    actual = featx.Runner(result.path).run(images.numpy())
    assert result.metadata.layer == "pre_logits"
    assert result.metadata.embedding_dim == expected.shape[1]
    min_cosine, max_rel = _figures(expected, actual)
    assert min_cosine >= FP32_MIN_COSINE
    assert max_rel <= FP32_MAX_REL


@pytest.mark.slow
@pytest.mark.parametrize("name", DEFAULT_ARCHS + SLOW_ARCHS)
def test_fp16_export_passes_the_fp16_gate_against_the_fp32_model(name, tmp_path):
    model = _random_timm_model(name)
    result = _export_state_dict(name, model, tmp_path, fp16=True)
    images = _images(result.metadata.preprocess.crop_size)
    with torch.no_grad():
        expected = _pre_logits_oracle(name, model)(images).numpy()
    min_cosine, _ = _figures(expected, featx.Runner(result.path).run(images.numpy()))
    assert min_cosine >= FP16_MIN_COSINE


def test_reparameterisable_blocks_are_deployed_and_the_gate_checks_the_original(tmp_path):
    model = _random_timm_model("fastvit_t8")
    result = _export_state_dict("fastvit_t8", model, tmp_path)
    assert result.fold.reparameterized
    assert result.metadata.source["reparameterized"] == len(result.fold.reparameterized)
    # The user's model object is left in its training (multi-branch) form.
    blocks = [m for m in model.modules() if hasattr(m, "inference_mode")]
    assert blocks
    assert not any(m.inference_mode for m in blocks)


@pytest.mark.parametrize(
    "name",
    [
        "vit_small_patch16_224",  # bicubic, crop_pct 0.9, mean/std 0.5
        "resnet50.tv_in1k",  # bilinear, crop_pct 0.875, ImageNet mean/std
        "convnext_tiny.fb_in22k_ft_in1k",  # bicubic, crop_pct 0.875
        "efficientnet_b3.ra2_in1k",  # bicubic, crop_pct 0.904 at 288
        "deit_tiny_patch16_224.fb_in1k",  # bicubic, crop_pct 0.875
        "eva02_tiny_patch14_224.mim_in22k",  # bicubic, crop_pct 0.9, CLIP mean/std
        "convnext_base.fb_in22k_ft_in1k_384",  # crop_mode squash, crop_pct 1.0
        "dm_nfnet_f0.dm_in1k",  # crop_mode squash, crop_pct 0.9, 192 input
    ],
)
def test_cpp_pipeline_equals_timm_eval_transform_on_real_photos(name):
    config = timm.data.resolve_data_config(
        pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict()
    )
    transform = timm.data.create_transform(**config)
    preprocess = get_extractor(f"timm:{name}").preprocess
    assert preprocess.interpolation == config["interpolation"]
    spec = spec_dict(preprocess)
    largest = 0.0
    for photo in parity_photos().values():
        expected = transform(photo).numpy()
        actual = _runner.preprocess_rgb(np.asarray(photo.convert("RGB")), spec)
        assert actual.shape == expected.shape
        largest = max(largest, float(np.abs(actual - expected).max()))
    assert largest <= 1e-6  # normalised units: bit-exact (one pixel level is ~0.017)


def test_pickled_timm_module_exports_its_pre_logits_with_its_own_preprocessing(tmp_path):
    model = _random_timm_model("convnext_atto")
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    result = featx.export(path, tmp_path / "whole.onnx", trust_pickle=True)
    assert result.metadata.arch == "timm:convnext_atto"
    assert result.metadata.layer == "pre_logits"
    config = timm.data.resolve_model_data_config(model)
    assert result.metadata.preprocess.interpolation == config["interpolation"]
    assert result.metadata.preprocess.resize_size == int(224 / config["crop_pct"])
    images = _images(224)
    with torch.no_grad():
        expected = _pre_logits_oracle("convnext_atto", model)(images).numpy()
    assert _figures(expected, featx.Runner(result.path).run(images.numpy()))[0] >= FP32_MIN_COSINE


def test_hub_folder_with_its_pretrained_cfg_and_a_headless_state_dict(tmp_path):
    """A folder as the Hugging Face hub holds a timm model: config.json + model.safetensors,
    here saved from a num_classes=0 model and with a pretrained_cfg of its own."""
    headless = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    folder = tmp_path / "hub"
    folder.mkdir()
    save_file(headless.state_dict(), folder / "model.safetensors")
    pretrained_cfg = {"crop_pct": 0.95, "interpolation": "bilinear", "mean": [0.5] * 3}
    config = {"architecture": "resnet18", "num_classes": 0, "pretrained_cfg": pretrained_cfg}
    (folder / "config.json").write_text(json.dumps(config))
    result = featx.export(folder, tmp_path / "hub.onnx")
    preprocess = result.metadata.preprocess
    assert (preprocess.resize_size, preprocess.interpolation) == (235, "bilinear")
    assert preprocess.mean == (0.5, 0.5, 0.5)
    assert result.metadata.source["kind"] == "timm_hub"
    images = _images(224)
    with torch.no_grad():
        expected = headless(images).numpy()
    assert _figures(expected, featx.Runner(result.path).run(images.numpy()))[0] >= FP32_MIN_COSINE


def test_timm_training_checkpoint_names_its_own_arch(tmp_path):
    model = _random_timm_model("resnet18")
    path = tmp_path / "model_best.pth.tar"
    args = argparse.Namespace(model="resnet18", lr=0.1, epochs=3)
    torch.save(
        {"epoch": 2, "arch": "resnet18", "state_dict": model.state_dict(), "args": args}, path
    )
    result = featx.export(path, tmp_path / "best.onnx")
    assert (result.metadata.arch, result.metadata.source["kind"]) == (
        "timm:resnet18",
        "timm_checkpoint",
    )
    with pytest.raises(FeatxError, match="timm training checkpoint of 'timm:resnet18'"):
        featx.export(path, tmp_path / "other.onnx", arch="timm:resnet34")


def test_unknown_and_unsupported_timm_archs_are_clear_errors(tmp_path):
    with pytest.raises(
        FeatxError,
        match=r"unknown timm architecture 'vit_tiny_patch16_22'.*"
        r"Did you mean: vit_tiny_patch16_224",
    ):
        get_extractor("timm:vit_tiny_patch16_22")
    with pytest.raises(FeatxError, match=r"crop_mode 'border'.*'center' and 'squash' modes only"):
        get_extractor("timm:deepseek_vit_412m.deepseek_v4_1_flash")


def test_missing_timm_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(MissingExtraError, match=r"needs timm.*pip install 'featx\[timm\]'"):
        get_extractor("timm:resnet18")


def test_layers_and_export_print_the_default_embedding(tmp_path, capsys):
    assert main(["layers", "timm:resnet18"]) == 0
    out = capsys.readouterr().out
    assert "default embedding: pre_logits" in out
    model = _random_timm_model("resnet18")
    torch.save(model.state_dict(), tmp_path / "r18.pt")
    assert main(["export", str(tmp_path / "r18.pt"), "--arch", "timm:resnet18"]) == 0
    assert "embedding: pre_logits (timm's pre-logits features" in capsys.readouterr().out


def test_photo_through_featx_extract_equals_timm_transform_then_model(tmp_path):
    """End to end on a real photo: featx extract's embedding equals timm's own eval transform
    followed by the num_classes=0 model."""
    name = "deit_tiny_patch16_224.fb_in1k"
    model = _random_timm_model(name)
    result = _export_state_dict(name, model, tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    names = sorted(parity_photos())
    for name_ in names:
        parity_photos()[name_].convert("RGB").save(photos / f"{name_}.png")
    featx.extract(result.path, photos, tmp_path / "out", progress=False)
    ids, actual, errors = read_features(tmp_path / "out")
    assert not errors
    assert len(ids) == len(names)
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config)
    batch = torch.stack([transform(Image.open(photos / f"{n}.png").convert("RGB")) for n in names])
    with torch.no_grad():
        expected = _pre_logits_oracle(name, model)(batch).numpy()
    min_cosine, max_rel = _figures(expected, actual)
    assert min_cosine >= FP32_MIN_COSINE
    assert max_rel <= FP32_MAX_REL


def test_featx_train_on_a_timm_arch_exports_the_trained_pre_logits(tmp_path):
    """featx train --arch timm:NAME fine-tunes the timm model; its checkpoint exports the
    trained model's pre-logits features, not the head's logits."""
    data = tmp_path / "data"
    for label, photo in enumerate(sorted(parity_photos())[:2]):
        (data / str(label)).mkdir(parents=True)
        for turn in range(6):
            image = parity_photos()[photo].convert("RGB").rotate(turn * 30)
            image.save(data / str(label) / f"{turn}.jpg")
    torch.manual_seed(0)
    trained = featx.train(
        data,
        "timm:resnet18",
        tmp_path / "r18.pt",
        strategy="partial",
        blocks=1,
        epochs=1,
        batch_size=4,
        image_size=32,
        progress=False,
    )
    result = featx.export(trained.checkpoint, tmp_path / "r18.onnx")
    assert (result.metadata.arch, result.metadata.layer) == ("timm:resnet18", "pre_logits")
    assert result.metadata.preprocess.crop_size == 32
    state = torch.load(trained.checkpoint, weights_only=True)["state_dict"]
    oracle = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    oracle.load_state_dict(state, strict=False)
    images = _images(32)
    with torch.no_grad():
        expected = oracle(images).numpy()
    min_cosine, max_rel = _figures(expected, featx.Runner(result.path).run(images.numpy()))
    assert expected.shape[1] == 512
    assert min_cosine >= FP32_MIN_COSINE
    assert max_rel <= FP32_MAX_REL
