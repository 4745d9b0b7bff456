import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import featx
from featx.features import build_feature_model
from featx.models import get_extractor, list_extractors
from featx.parity import FP16_MIN_COSINE, FP32_MAX_REL, FP32_MIN_COSINE, compare
from featx.runtime.metadata import read_metadata
from featx.runtime.ort_config import cpu_session


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _weight_bytes(path):
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def _eager_features(model, arch, batch, **overrides):
    extractor = get_extractor(arch)
    options = {"layer": extractor.layer, "pool": extractor.pool, "normalize": False}
    options.update(overrides)
    feature_model, _ = build_feature_model(model, input_size=batch.shape[-1], **options)
    with torch.no_grad():
        return feature_model(batch).numpy()


@pytest.mark.parametrize("arch", list_extractors())
def test_every_registered_extractor_exports_within_the_parity_gate(arch, make_checkpoint):
    checkpoint, model = make_checkpoint(arch)
    result = featx.export(checkpoint)

    assert result.parity.passed
    assert result.path == checkpoint.with_suffix(".onnx")
    n_batchnorms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert len(result.fold.folded) <= n_batchnorms
    graph_ops = {node.op_type for node in onnx.load(str(result.path)).graph.node}
    if result.fold.folded and not result.fold.skipped:
        assert "BatchNormalization" not in graph_ops

    # Independent of the exporter's own check: fresh inputs at batch sizes it never saw.
    size = get_extractor(arch).preprocess.crop_size
    session = _session(result.path)
    for batch_size in (1, 3):
        batch = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(7))
        got = session.run(None, {"images": batch.numpy()})[0]
        figures = compare(_eager_features(model, arch, batch), got)
        assert figures.min_cosine >= FP32_MIN_COSINE
        assert figures.max_rel <= FP32_MAX_REL

    metadata = read_metadata(result.path)
    assert metadata == result.metadata
    assert metadata.arch == arch
    assert metadata.embedding_dim == get_extractor(arch).feature_info.dim == got.shape[1]
    assert metadata.preprocess == get_extractor(arch).preprocess
    assert metadata.parity["passed"] is True
    assert set(metadata.parity) >= {"random", "photos", "gate"}


# vit_b_16: ORT 1.31 crashed creating a session for it under ORT_ENABLE_ALL (see ort_config).
@pytest.mark.parametrize("arch", ["resnet18", "transformer_encoder", "vit_b_16"])
def test_fp16_export_halves_the_weights_and_stays_within_the_fp16_gate(arch, make_checkpoint):
    checkpoint, model = make_checkpoint(arch)
    fp32 = featx.export(checkpoint, checkpoint.with_name("fp32.onnx"))
    fp16 = featx.export(checkpoint, checkpoint.with_name("fp16.onnx"), fp16=True)

    assert fp16.metadata.dtype == "float16"
    assert fp16.metadata.io_dtype == "float32"
    assert _weight_bytes(fp16.path) <= 0.51 * _weight_bytes(fp32.path)  # int64 shapes stay
    graph = onnx.load(str(fp16.path)).graph
    weights = [t for t in graph.initializer if len(t.dims) >= 2]
    assert weights
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    size = get_extractor(arch).preprocess.crop_size
    batch = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(3))
    got = cpu_session(fp16.path, "float16").run(None, {"images": batch.numpy()})[0]
    assert got.dtype == np.float32
    assert compare(_eager_features(model, arch, batch), got).min_cosine >= FP16_MIN_COSINE


def test_fp16_io_takes_and_returns_half_tensors(make_checkpoint):
    checkpoint, _ = make_checkpoint("small_cnn")
    result = featx.export(checkpoint, fp16=True, fp16_io=True)
    session = _session(result.path)
    out = session.run(None, {"images": np.zeros((2, 3, 32, 32), np.float16)})[0]
    assert out.dtype == np.float16
    assert out.shape == (2, 128)


@pytest.mark.parametrize(
    ("layer", "pool", "dim"),
    [("layer3", "gem", 256), ("layer3", "max", 256), ("layer2", "none", 128 * 28 * 28)],
)
def test_chosen_layer_and_pooling_are_exported(layer, pool, dim, make_checkpoint):
    checkpoint, model = make_checkpoint("resnet18")
    result = featx.export(checkpoint, layer=layer, pool=pool, normalize=True)
    assert (result.metadata.layer, result.metadata.pooling) == (layer, pool)
    assert result.metadata.embedding_dim == dim
    assert result.metadata.normalize

    batch = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    got = _session(result.path).run(None, {"images": batch.numpy()})[0]
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    expected = _eager_features(model, "resnet18", batch, layer=layer, pool=pool, normalize=True)
    assert compare(expected, got).min_cosine >= FP32_MIN_COSINE


def test_plain_state_dict_with_arch_infers_the_head_and_strips_dataparallel_prefix(tmp_path):
    torch.manual_seed(0)
    model = get_extractor("resnet18").build_model(num_classes=7)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "weights.pth")
    result = featx.export(tmp_path / "weights.pth", tmp_path / "out.onnx", arch="resnet18")
    assert result.metadata.source["kind"] == "state_dict"
    assert result.parity.passed


def test_trusted_pickled_module_and_pt2_program_export(tmp_path):
    torch.manual_seed(0)
    model = get_extractor("small_cnn").build_model().eval()
    torch.save(model, tmp_path / "whole.pt")
    result = featx.export(tmp_path / "whole.pt", trust_pickle=True, input_size=32)
    assert result.metadata.source["kind"] == "pickle"
    # A model featx does not know by name embeds as its own forward returns: here, its logits.
    assert result.metadata.layer == "output"
    assert result.metadata.embedding_dim == model.classifier.out_features
    assert "the model's own output" in result.metadata.layer_reason

    batch = {"images": {0: torch.export.Dim("batch")}}
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes=batch)
    torch.export.save(program, tmp_path / "program.pt2")
    result = featx.export(tmp_path / "program.pt2", trust_pickle=True, input_size=32)
    assert result.metadata.source["kind"] == "pt2"
    assert result.parity.passed
