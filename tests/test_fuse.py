"""featx.fuse: what it recognises, that the fused model equals the eager one, and extraction
through the (fused) PyTorch model.

On CPU the fused kernels run under Triton's interpreter (conftest.py) for the small models; the
torchvision-sized models check the graph rewriting with the ops' PyTorch composition (the
interpreter would take minutes), the kernels themselves being covered by test_kernels.py.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.vision_transformer import VisionTransformer

import featx
import featx.kernels.launch as launch
from featx.cli import main
from featx.fusion import FusedConv2d, FusedMultiheadAttention
from featx.models import get_extractor
from featx.parity import compare
from featx.testing.models import randomize_batchnorm

SEEDS = ["small_cnn", "simsiam_cnn", "conv_autoencoder", "transformer_encoder"]
MIN_COSINE = 0.99999
MAX_REL = 1e-5


def _assert_same_outputs(model, fused, batch):
    with torch.no_grad():
        expected = model(batch)
        got = fused(batch)
    figures = compare(expected.flatten(1).numpy(), got.flatten(1).numpy())
    assert figures.min_cosine >= MIN_COSINE, figures
    assert figures.max_rel <= MAX_REL, figures


def _tiny_vit():
    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=160, mlp_dim=64
    )
    nn.init.normal_(vit.heads.head.weight)  # torchvision zero-initialises the head
    return vit.eval()


def _torchvision_blocks():
    """torchvision's own residual blocks at small widths: basic, and bottleneck with a strided
    conv-bn downsample branch."""
    torch.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        BasicBlock(16, 16),
        Bottleneck(16, 8, stride=2, downsample=downsample),
    )
    return randomize_batchnorm(model).eval()


@pytest.mark.parametrize("arch", SEEDS)
def test_fused_seed_model_equals_eager_with_interpreted_kernels(arch):
    torch.manual_seed(0)
    model = randomize_batchnorm(get_extractor(arch).build_model()).eval()
    fused = featx.fuse(model)
    assert sum(fused.fuse_report.fused.values()) >= 2
    _assert_same_outputs(model, fused, torch.randn(2, 3, 32, 32))


def test_torchvision_residual_blocks_fuse_add_and_relu_into_the_conv():
    model = _torchvision_blocks()
    fused = featx.fuse(model)
    assert fused.fuse_report.fused == {
        "conv+bn+relu": 4,  # stem, basic conv1, bottleneck conv1 and conv2
        "conv+bn+add+relu": 2,  # basic conv2 + identity, bottleneck conv3 + downsample
        "conv+bn": 1,  # the downsample branch
    }
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in fused.modules())
    _assert_same_outputs(model, fused, torch.randn(2, 3, 13, 13))


def test_vit_multihead_attention_fuses_with_interpreted_kernel():
    model = _tiny_vit()
    fused = featx.fuse(model)
    assert fused.fuse_report.fused == {"multihead_attention": 2}
    assert sum(isinstance(m, FusedMultiheadAttention) for m in fused.modules()) == 2
    _assert_same_outputs(model, fused, torch.randn(2, 3, 32, 32))


class _PaddedEncoder(nn.Module):
    """Sequence-first nn.MultiheadAttention with a key padding mask passed at call time."""

    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(40, 2)

    def forward(self, tokens, padding):
        attended, _ = self.attention(
            tokens, tokens, tokens, key_padding_mask=padding, need_weights=False
        )
        return attended


def test_key_padding_mask_and_sequence_first_layout_are_honoured():
    torch.manual_seed(0)
    model = _PaddedEncoder().eval()
    fused = featx.fuse(model)
    assert fused.fuse_report.fused == {"multihead_attention": 1}
    tokens = torch.randn(19, 2, 40)
    padding = torch.zeros(2, 19, dtype=torch.bool)
    padding[0, 7:] = True
    with torch.no_grad():
        expected = model(tokens, padding)
        got = fused(tokens, padding)
    # Padded keys change the result, so equality shows the mask reached the kernel.
    assert not torch.allclose(expected, model(tokens, torch.zeros_like(padding)), atol=1e-3)
    figures = compare(expected.flatten(1).numpy(), got.flatten(1).numpy())
    assert figures.min_cosine >= MIN_COSINE, figures
    assert figures.max_rel <= MAX_REL, figures


class _Unfusable(nn.Module):
    """Blocks featx must leave to PyTorch: a depthwise conv, attention whose weights are used,
    causal SDPA."""

    def __init__(self):
        super().__init__()
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, images):
        maps = F.relu(self.bn(self.depthwise(images)))
        tokens = maps.flatten(2).transpose(1, 2)
        attended, weights = self.attention(tokens, tokens, tokens)
        heads = attended.reshape(attended.shape[0], attended.shape[1], 2, 4).transpose(1, 2)
        causal = F.scaled_dot_product_attention(heads, heads, heads, is_causal=True)
        return causal.flatten(1) + weights.flatten(1).sum(1, keepdim=True)


def test_what_cannot_be_fused_stays_pytorch_and_is_reported():
    torch.manual_seed(0)
    model = randomize_batchnorm(_Unfusable()).eval()
    fused = featx.fuse(model)
    report = fused.fuse_report
    assert not report.fused, report.summary()
    assert len(report.left) == 3
    assert any("groups=8" in entry for entry in report.left)
    assert any("attention weights are used" in entry for entry in report.left)
    assert any("causal" in entry for entry in report.left)
    assert "nothing fused" in report.summary()
    _assert_same_outputs(model, fused, torch.randn(2, 8, 5, 5))


def test_fuse_leaves_the_original_model_untouched():
    model = _torchvision_blocks()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    featx.fuse(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.fixture
def reference_ops(monkeypatch):
    """CPU without the interpreter: the fused ops compute with PyTorch (fast for big models)."""
    monkeypatch.setattr(launch, "INTERPRET", False)


@pytest.mark.parametrize(
    ("arch", "expected", "size"),
    [
        ("resnet18", {"conv+bn+relu": 9, "conv+bn+add+relu": 8, "conv+bn": 3}, 64),
        ("resnet50", {"conv+bn+relu": 33, "conv+bn+add+relu": 16, "conv+bn": 4}, 64),
        ("vgg16", {"conv+relu": 13}, 32),
        ("vit_b_16", {"multihead_attention": 12}, 224),
    ],
)
def test_torchvision_models_are_recognised_by_graph_pattern(arch, expected, size, reference_ops):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    if arch == "vit_b_16":
        model.heads = nn.Identity()  # zero-initialised head would hide any difference
    model = randomize_batchnorm(model).eval()
    fused = featx.fuse(model)
    assert fused.fuse_report.fused == expected
    if arch.startswith("resnet"):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        assert sum(isinstance(m, FusedConv2d) for m in fused.modules()) == sum(expected.values())
    _assert_same_outputs(model, fused, torch.randn(1, 3, size, size))


def test_export_has_no_fuse_option(make_checkpoint, capsys):
    """Fused ops have no ONNX form a runtime executes: exporting them would write the same
    standard ops as without fusing, so featx-export offers no --fuse."""
    checkpoint, _ = make_checkpoint("small_cnn")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(checkpoint), "--fuse"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --fuse" in capsys.readouterr().err
    assert not checkpoint.with_suffix(".onnx").exists()


@pytest.fixture(scope="module")
def digit_jpegs(tmp_path_factory):
    """Seven real JPEGs (scikit-learn's handwritten digits); few, as the fused model runs on
    Triton's interpreter here."""
    from featx.data.digits import write_digits

    every = write_digits(tmp_path_factory.mktemp("all-digits"))
    folder = tmp_path_factory.mktemp("digits")
    for path in every[:7]:
        (folder / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
    return folder


def _features(out):
    manifest = json.loads((out / "manifest.json").read_text())
    ids, rows = [], []
    for shard in manifest["shards"]:
        ids += json.loads((out / shard["files"]["ids"]).read_text())
        rows.append(np.load(out / shard["files"]["features"]))
    return ids, np.concatenate(rows)


@pytest.mark.parametrize("fuse", [False, True], ids=["eager", "fused"])
def test_torch_backend_features_match_the_onnx_backend(
    fuse, make_checkpoint, digit_jpegs, tmp_path
):
    checkpoint, _ = make_checkpoint("small_cnn")
    exported = featx.export(checkpoint, tmp_path / "small_cnn.onnx")
    featx.extract(exported.path, digit_jpegs, tmp_path / "onnx", shard_size=4, progress=False)
    summary = featx.extract(
        checkpoint,
        digit_jpegs,
        tmp_path / "torch",
        shard_size=4,
        progress=False,
        backend="torch",
        fuse=fuse,
    )
    assert summary.rows == 7
    onnx_ids, onnx_rows = _features(tmp_path / "onnx")
    torch_ids, torch_rows = _features(tmp_path / "torch")
    assert torch_ids == onnx_ids
    assert compare(onnx_rows, torch_rows).min_cosine >= 0.9999
    manifest = json.loads((tmp_path / "torch" / "manifest.json").read_text())
    assert manifest["settings"]["backend"] == "torch"
    assert manifest["settings"]["fuse"] is fuse


def test_cli_extract_with_torch_backend_and_fuse(make_checkpoint, digit_jpegs, tmp_path):
    checkpoint, _ = make_checkpoint("small_cnn")
    out = tmp_path / "out"
    arguments = ["extract", str(checkpoint), str(digit_jpegs), "-o", str(out)]
    code = main([*arguments, "--backend", "torch", "--fuse", "--quiet"])
    assert code == 0
    ids, rows = _features(out)
    assert len(ids) == 7
    assert rows.shape == (7, 128)


def test_fuse_with_the_onnx_backend_is_a_clear_error(make_checkpoint, digit_jpegs, tmp_path):
    checkpoint, _ = make_checkpoint("small_cnn")
    exported = featx.export(checkpoint, tmp_path / "m.onnx")
    out = tmp_path / "o"
    code = main(["extract", str(exported.path), str(digit_jpegs), "-o", str(out), "--fuse"])
    assert code == 2
    assert not out.exists()


def _cosine_rows(expected, got):
    return compare(expected.float().flatten(1).cpu().numpy(), got.float().flatten(1).cpu().numpy())


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["resnet50", "vit_b_16"])
def test_fused_model_matches_eager_on_gpu_in_fp16(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    if arch == "vit_b_16":
        model.heads = nn.Identity()
    model = randomize_batchnorm(model).eval().cuda().half()
    model = model.to(memory_format=torch.channels_last)
    fused = featx.fuse(model)
    # Batch 16, a multiple of 16 as the GPU benchmark's 64 and 256: Triton specialises integer
    # arguments on divisibility by 16, so the benchmark reuses the kernels compiled here.
    images = torch.randn(16, 3, 224, 224, device="cuda", dtype=torch.float16)
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = model(images)
        got = fused(images)
    assert _cosine_rows(expected, got).min_cosine >= 0.9999
