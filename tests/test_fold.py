import torch
from torch import fx, nn
from torchvision.ops.misc import Conv2dNormActivation

from featx.features import build_feature_model
from featx.fold import fold_batchnorm
from featx.models import get_extractor
from featx.testing.models import randomize_batchnorm

# Folding reorders float32 arithmetic only: outputs agree to a few float32 ulps of the scale.
FOLD_RTOL = 1e-5


class ConvLinearNet(nn.Module):
    """conv->bn (graph nodes), conv->bn inside a traced-as-leaf block, linear->bn1d, dropout."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block = Conv2dNormActivation(8, 16, kernel_size=3, stride=2)
        self.fc = nn.Linear(16, 12, bias=False)
        self.bn1d = nn.BatchNorm1d(12, affine=False)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.block(torch.relu(self.bn(self.conv(x))))
        return self.drop(self.bn1d(self.fc(x.mean(dim=(2, 3)))))


def _max_rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_folding_removes_every_batchnorm_and_keeps_outputs():
    torch.manual_seed(0)
    model = randomize_batchnorm(ConvLinearNet()).eval()
    feature_model, _ = build_feature_model(
        model, layer="drop", pool="none", normalize=False, input_size=13
    )
    body = feature_model.body
    x = torch.randn(4, 3, 13, 13)
    with torch.no_grad():
        before = body(x)
        report = fold_batchnorm(body)
        after = body(x)
    assert sorted(report.folded) == [("block.0", "block.1"), ("conv", "bn"), ("fc", "bn1d")]
    assert report.dropouts_removed == 1
    assert not report.skipped
    kinds = (nn.modules.batchnorm._BatchNorm, nn.Dropout)
    assert not [m for m in body.modules() if isinstance(m, kinds)]
    assert _max_rel(after, before) < FOLD_RTOL


def test_a_conv_whose_output_feeds_more_than_the_batchnorm_is_not_folded():
    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = randomize_batchnorm(Branching()).eval()
    graph_module = fx.symbolic_trace(model)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        before = graph_module(x)
        report = fold_batchnorm(graph_module)
        after = graph_module(x)
    assert report.folded == []
    assert report.skipped == ["bn: conv output is also used elsewhere"]
    torch.testing.assert_close(after, before)


def test_folding_resnet50_keeps_features_within_float32_rounding():
    torch.manual_seed(0)
    model = randomize_batchnorm(get_extractor("resnet50").build_model())
    feature_model, _ = build_feature_model(
        model, layer="layer4", pool="avg", normalize=False, input_size=64
    )
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = feature_model(x)
        report = fold_batchnorm(feature_model.body)
        after = feature_model(x)
    assert len(report.folded) == 53  # every BatchNorm of ResNet-50's trunk
    assert _max_rel(after, before) < FOLD_RTOL
