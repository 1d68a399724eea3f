"""Batch norms folded into their convolutions for inference: same outputs, found by data flow."""

import copy

import pytest
import torch
from torch import nn

from transfergrid.folding import fold_batch_norms
from transfergrid.model import build_base


def forward(model, x):
    return model(x)


def trained_norm(channels: int, seed: int) -> nn.BatchNorm2d:
    """A batch norm with non-trivial statistics and affine parameters, as after training."""
    norm = nn.BatchNorm2d(channels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(channels, generator=generator))
        norm.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
        norm.weight.copy_(torch.randn(channels, generator=generator))
        norm.bias.copy_(torch.randn(channels, generator=generator))
    return norm


class RegisteredOutOfOrder(nn.Module):
    """The batch norm is registered before its convolution, and a second one normalises the
    input (no convolution before it): only the data flow says what folds."""

    def __init__(self):
        super().__init__()
        self.norm = trained_norm(8, 1)
        self.input_norm = trained_norm(3, 2)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.norm(self.conv(self.input_norm(x)))


class SharedConvolutionOutput(nn.Module):
    """The convolution's output feeds the batch norm and a residual sum: folding would change the
    sum, so the folded copy must be rejected."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = trained_norm(4, 3)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y


def test_folds_by_data_flow_and_leaves_the_model_unchanged():
    model = RegisteredOutOfOrder().eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    folded = fold_batch_norms(model, forward, x)
    assert folded is not model
    assert isinstance(folded.norm, nn.Identity)  # folded into conv
    assert isinstance(folded.input_norm, nn.BatchNorm2d)  # nothing to fold into
    assert folded.conv.bias is not None
    with torch.inference_mode():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in before.items())


def test_a_convolution_output_used_twice_is_not_folded():
    model = SharedConvolutionOutput()
    lines = []
    assert fold_batch_norms(model, forward, torch.randn(2, 4, 8, 8), lines.append) is model
    assert len(lines) == 1 and lines[0].startswith("batch norms not folded: the folded network is off by")


def test_norms_without_running_statistics_and_models_without_norms_stay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert fold_batch_norms(model, forward, torch.randn(2, 3, 8, 8)) is model
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert fold_batch_norms(plain, forward, torch.randn(2, 3, 8, 8)) is plain
    assert not model.training  # always left in eval mode


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0", "mobilenet_v3_small"])
def test_backbones_fold_every_norm_and_give_the_same_features(backbone):
    """torchvision's BatchNorm2d and timm's BatchNormAct2d (whose activation stays)."""
    net = build_base(backbone, None, 0)
    for module in net.modules():  # statistics as after training, so that folding changes weights
        if isinstance(module, nn.BatchNorm2d):
            module.load_state_dict(trained_norm(module.num_features, module.num_features).state_dict())

    def features(model, x):
        return model.forward_features(x)

    x = torch.randn(2, 3, 64, 64)
    folded = fold_batch_norms(net, features, x)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    with torch.inference_mode():
        expected, actual = features(net, x), features(folded, x)
    assert (expected - actual).abs().max() <= 1e-4 * expected.abs().max()
