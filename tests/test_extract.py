"""featx extract of a real torchvision model against the eager PIL + torchvision path users write.
The runtime's own behaviour (hostile inputs, formats, resume, signals) is tested without PyTorch
in tests/runtime."""

import pytest
import torch

import featx
from featx.features import build_feature_model
from featx.models import get_extractor
from featx.models.checkpoint import save_checkpoint
from featx.parity import compare
from featx.preprocess import reference_transform
from featx.runtime.decode import open_rgb
from featx.runtime.extract import extract
from featx.runtime.inputs import list_inputs
from featx.runtime.shards import read_features
from featx.testing.models import randomize_batchnorm


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    """An exported resnet18 and its eager feature model (the reference)."""
    folder = tmp_path_factory.mktemp("resnet18")
    torch.manual_seed(0)
    model = randomize_batchnorm(get_extractor("resnet18").build_model())
    checkpoint = save_checkpoint(folder / "resnet18.pt", model, "resnet18")
    result = featx.export(checkpoint)
    reference, _ = build_feature_model(
        model, layer="layer4", pool="avg", normalize=False, input_size=224
    )
    return result.path, reference, result.metadata.preprocess


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photographs as JPEGs of varied sizes and orientations, plus a PNG."""
    from featx.data.photos import sample_photos

    folder = tmp_path_factory.mktemp("photos")
    sizes = [(500, 375), (375, 500), (333, 500), (640, 427), (97, 61), (224, 224)]
    for i, photo in enumerate(sample_photos()):
        for j, size in enumerate(sizes):
            photo.resize(size).save(folder / f"p{i}-{j}.jpg", quality=90)
        photo.save(folder / f"p{i}.png")
    return folder


def test_features_match_the_pil_torchvision_path(resnet18, photos, tmp_path):
    path, reference, preprocess = resnet18
    summary = extract(path, photos, tmp_path / "out", batch_size=5, progress=False)
    ids, features, _ = read_features(tmp_path / "out")
    assert summary.rows == summary.inputs == len(ids) == 14
    assert ids == list_inputs(photos)
    transform = reference_transform(preprocess)
    batch = torch.stack([transform(open_rgb(p)) for p in ids])
    with torch.no_grad():
        expected = reference(batch).numpy()
    assert compare(expected, features).min_cosine >= 0.9999
