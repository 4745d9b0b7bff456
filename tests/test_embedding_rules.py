"""Which tensor featx exports as the embedding, by rule (featx.features): a named layer; the
classifier's input for models whose classifier featx knows (every torchvision classification
model); else the model's own output, never an inner layer guessed. The parity gate compares
against the user's own model."""

import copy
import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

import featx
from featx.cli import main
from featx.features import extractor_feature_model
from featx.models import get_extractor
from featx.models.torchvision_models import torchvision_names
from featx.parity import FP32_MAX_REL, FP32_MIN_COSINE, compare
from featx.testing.models import randomize_batchnorm

CURATED_ELSEWHERE = {"vgg16": 512}
"""Curated extractors whose embedding is deliberately not the classifier's input, with its dim:
VGG-16's is its average-pooled conv5 block (512-d; the classifier's input is the 25,088-d
flattened 7x7 map, which --layer avgpool gives). The sweep checks their classifier cut too."""
SMALL_INPUT = 96
"""Input size for the torchvision sweep, where the model takes any size (ViT and MaxViT take
only their own)."""


def _head_by_output(model, probe):
    """The classifier, found without featx's naming rule: the top-level child whose output is the
    model's output, and in it (a Sequential) the first Linear or Conv2d onwards."""
    outputs = {}
    hooks = [
        child.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for name, child in model.named_children()
    ]
    with torch.no_grad():
        final = model(probe)
    for hook in hooks:
        hook.remove()
    name = [
        name
        for name, out in outputs.items()
        if isinstance(out, torch.Tensor)
        and out.numel() == final.numel()
        and torch.equal(out.reshape(final.shape), final)
    ][-1]
    head = model.get_submodule(name)
    start = 0
    if isinstance(head, nn.Sequential):
        start = next(i for i, m in enumerate(head) if isinstance(m, (nn.Linear, nn.Conv2d)))
    return name, start


def _with_identity_head(model, name, start):
    oracle = copy.deepcopy(model)
    head = oracle.get_submodule(name)
    if start == 0:
        setattr(oracle, name, nn.Identity())
    else:
        for index in range(start, len(head)):
            head[index] = nn.Identity()
    return oracle.eval()


def _input_size(model):
    if isinstance(model, torchvision.models.MaxVit):
        return 224
    return getattr(model, "image_size", SMALL_INPUT)  # VisionTransformer's fixed size


@pytest.mark.parametrize("name", torchvision_names())
def test_every_torchvision_classifier_embeds_its_classifier_input(name):
    extractor = get_extractor(name)
    torch.manual_seed(0)
    model = randomize_batchnorm(extractor.build_model()).eval()
    size = _input_size(model)
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    oracle = _with_identity_head(model, *_head_by_output(model, probe))

    if name in CURATED_ELSEWHERE:
        extractor = dataclasses.replace(extractor, layer=None, pool="none", embedding="classifier")
    feature_model, layout = extractor_feature_model(extractor, model, size)
    assert layout.rule == ("classifier" if extractor.embedding == "classifier" else "layer")
    with torch.no_grad():
        expected = oracle(probe).flatten(1)
        got = feature_model(probe)
    torch.testing.assert_close(got, expected)
    # The model itself is left as it was: the cut shares its weights, not its structure.
    with torch.no_grad():
        assert model(probe).shape[1] == 1000


@pytest.mark.parametrize(("name", "dim"), CURATED_ELSEWHERE.items())
def test_curated_extractors_that_are_not_the_classifier_input_say_so(name, dim):
    extractor = get_extractor(name)
    assert extractor.layer is not None
    assert extractor.feature_info.dim == dim


def _ort_embeddings(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})[0]


def _photos_like(size):
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(5))


def test_a_whole_torchvision_transformer_embeds_its_own_output(tmp_path):
    """The issue's case: swin_t with head = Identity, saved whole, used to export the flattened
    output of an inner norm (75,264-d); its embedding is what its forward returns (768-d)."""
    torch.manual_seed(0)
    model = torchvision.models.swin_t().eval()
    model.head = nn.Identity()
    torch.save(model, tmp_path / "swin.pt")
    result = featx.export(tmp_path / "swin.pt", trust_pickle=True)
    assert (result.metadata.layer, result.metadata.embedding_dim) == ("output", 768)
    images = _photos_like(224)
    with torch.no_grad():
        expected = model(images).numpy()
    figures = compare(expected, _ort_embeddings(result.path, images))
    assert figures.min_cosine >= FP32_MIN_COSINE
    assert figures.max_rel <= FP32_MAX_REL


class TokenMixer(nn.Module):
    """A transformer-like model of the user's own: every block ends in an nn.Linear, and its
    forward returns a (B, D) embedding after a final norm, with no classifier."""

    def __init__(self, dim=48, depth=2):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, images):
        tokens = self.patch(images).flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = tokens + block(tokens)
        return self.norm(tokens.mean(dim=1))


class Untraceable(nn.Module):
    """Control flow on the input's size: torch.fx cannot trace it (torch.export can)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, images):
        features = self.bn(self.conv(images))
        if images.shape[-1] > 16:
            features = features.amax(dim=(2, 3), keepdim=True)
        return features.flatten(1)


def test_a_users_own_model_embeds_its_output_not_an_inner_linear(tmp_path):
    torch.manual_seed(0)
    model = TokenMixer().eval()
    torch.save(model, tmp_path / "mixer.pt")
    result = featx.export(tmp_path / "mixer.pt", trust_pickle=True, input_size=32)
    assert (result.metadata.layer, result.metadata.embedding_dim) == ("output", 48)
    images = _photos_like(32)
    with torch.no_grad():
        expected = model(images).numpy()
    assert compare(expected, _ort_embeddings(result.path, images)).min_cosine >= FP32_MIN_COSINE


def test_a_feature_map_output_asks_for_a_pooling(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()).eval()
    torch.save(model, tmp_path / "maps.pt")
    code = main(["export", str(tmp_path / "maps.pt"), "--trust-pickle", "--input-size", "32"])
    assert code == 2
    err = capsys.readouterr().err
    assert "feature maps of shape (16, 32, 32)" in err
    assert "--pool" in err
    assert not (tmp_path / "maps.onnx").exists()

    result = featx.export(tmp_path / "maps.pt", trust_pickle=True, input_size=32, pool="avg")
    images = _photos_like(32)
    with torch.no_grad():
        expected = model(images).mean(dim=(2, 3)).numpy()
    assert compare(expected, _ort_embeddings(result.path, images)).min_cosine >= FP32_MIN_COSINE


def test_an_untraceable_model_is_exported_whole_with_a_notice(tmp_path, capsys):
    torch.manual_seed(0)
    model = randomize_batchnorm(Untraceable()).eval()
    torch.save(model, tmp_path / "untraceable.pt")
    model_file = str(tmp_path / "untraceable.pt")
    assert main(["export", model_file, "--trust-pickle", "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "embedding: output" in out
    assert "torch.fx cannot trace it, so it is exported whole" in out
    metadata = featx.read_metadata(tmp_path / "untraceable.onnx")
    assert "exported whole" in metadata.layer_reason

    code = main(["export", model_file, "--trust-pickle", "--input-size", "32", "--layer", "conv"])
    assert code == 2
    assert "cannot be traced with torch.fx" in capsys.readouterr().err


def test_the_default_is_printed_stored_and_marked(make_checkpoint, tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(get_extractor("regnet_x_400mf").build_model().state_dict(), tmp_path / "w.pt")
    assert main(["export", str(tmp_path / "w.pt"), "--arch", "regnet_x_400mf"]) == 0
    out = capsys.readouterr().out
    assert "embedding: input of fc (regnet_x_400mf's classifier fc removed" in out
    metadata = featx.read_metadata(tmp_path / "w.onnx")
    assert metadata.layer == "input of fc"
    assert metadata.embedding_dim == 400
    assert "classifier fc removed" in metadata.layer_reason

    assert main(["layers", "regnet_x_400mf"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "fc  <- the classifier: the default embedding is its input" in lines
    assert lines[-1] == "default embedding: input of fc"
    assert main(["layers", "resnet18"]) == 0
    assert "layer4  <- the default embedding" in capsys.readouterr().out.splitlines()


def test_the_embedding_of_a_pt2_program_is_its_output(tmp_path):
    torch.manual_seed(0)
    model = TokenMixer().eval()
    batch = {"images": {0: torch.export.Dim("batch")}}
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes=batch)
    torch.export.save(program, tmp_path / "mixer.pt2")
    result = featx.export(tmp_path / "mixer.pt2", trust_pickle=True, input_size=32)
    assert (result.metadata.layer, result.metadata.embedding_dim) == ("output", 48)
    images = _photos_like(32)
    with torch.no_grad():
        expected = model(images).numpy()
    assert np.allclose(_ort_embeddings(result.path, images), expected, atol=1e-5)
