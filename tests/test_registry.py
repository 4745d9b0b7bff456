import pytest
import torch
from torchvision.models import get_model_weights

from featx import FeatxError
from featx.features import build_feature_model, extractor_feature_model
from featx.models import get_extractor, list_extractors

REQUIRED = {
    "resnet18",
    "resnet50",
    "vgg16",
    "vit_b_16",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "small_cnn",
    "gru_encoder",
    "lstm_encoder",
    "transformer_encoder",
    "conv_autoencoder",
    "simsiam_cnn",
    "dcgan_discriminator",
}


def test_registry_holds_the_curated_backbones_and_seed_models():
    assert set(list_extractors()) >= REQUIRED


@pytest.mark.parametrize("name", list_extractors())
def test_declared_feature_info_matches_the_traced_model(name):
    extractor = get_extractor(name)
    torch.manual_seed(0)
    _, layout = extractor_feature_model(
        extractor, extractor.build_model(), extractor.preprocess.crop_size
    )
    assert layout.traced
    assert layout.embedding_dim == extractor.feature_info.dim
    assert layout.stride == extractor.feature_info.stride


def test_any_torchvision_classifier_gets_its_classifier_input_by_default():
    extractor = get_extractor("shufflenet_v2_x0_5")
    assert not extractor.curated
    assert extractor.embedding == "classifier"
    transform = get_model_weights("shufflenet_v2_x0_5").DEFAULT.transforms()
    assert extractor.preprocess.crop_size == transform.crop_size[0]
    assert extractor.preprocess.resize_size == transform.resize_size[0]
    model = extractor.build_model()
    _, layout = build_feature_model(
        model, layer=None, pool="none", normalize=False, input_size=224, embedding="classifier"
    )
    assert layout.layer == "input of fc"
    assert layout.embedding_dim == model.fc.in_features


def test_unknown_arch_suggests_close_names():
    with pytest.raises(FeatxError, match=r"unknown architecture 'resnet19'.*resnet18"):
        get_extractor("resnet19")
