"""What each strategy trains, checked tensor by tensor after real optimisation steps."""

import pytest
import torch

from helpers import cell_config, changed_keys, random_batches, snapshot
from transfergrid.strategies import parse_strategy
from transfergrid.train import build_model, fit

BACKBONES = ["resnet18", "efficientnet_lite0"]


def train_briefly(backbone, strategy, **cell_overrides):
    cell = cell_config(backbone=backbone, strategy=strategy, **cell_overrides)
    torch.manual_seed(0)
    model = build_model(cell, num_classes=3, weights_file=None)
    before = snapshot(model)
    result = fit(model, parse_strategy(strategy), random_batches(), random_batches(train=False), cell, log=lambda m: None)
    return model, before, snapshot(model), result


@pytest.mark.parametrize("backbone", BACKBONES)
def test_frozen_leaves_every_backbone_tensor_bit_identical(backbone):
    model, before, after, result = train_briefly(backbone, "frozen")
    changed = changed_keys(before, after)
    backbone_keys = {k for k in before if k.startswith("backbone.")}
    assert any("running_mean" in k for k in backbone_keys)  # BatchNorm buffers are part of the check
    assert changed & backbone_keys == set()
    assert {"head.weight", "head.bias"} <= changed
    head_params = sum(p.numel() for p in model.head.parameters())
    assert result.parameter_counts["trainable_params"] == head_params
    assert result.parameter_counts["frozen_params"] == sum(p.numel() for p in model.backbone.parameters())


def test_frozen_base_keeps_batchnorm_in_eval_mode_during_training():
    cell = cell_config(strategy="frozen")
    model = build_model(cell, 3, None)
    model.apply_phase(parse_strategy("frozen").phase(0, len(model.backbone.stage_names)))
    model.train()
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert model.head.training


def test_train_bn_opts_back_into_batchnorm_statistics():
    model, before, after, _ = train_briefly("resnet18", "frozen", train_bn=True)
    changed = changed_keys(before, after)
    assert any(k.endswith("running_mean") for k in changed)
    assert not any(k.endswith(".weight") and k.startswith("backbone.") for k in changed)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_full_trains_every_parameter(backbone):
    model, before, after, result = train_briefly(backbone, "full")
    trained = {name for name, p in model.named_parameters()}
    assert trained - changed_keys(before, after) == set()
    assert result.parameter_counts["frozen_params"] == 0


def test_unknown_strategy_names_the_value():
    with pytest.raises(ValueError, match="frozn"):
        parse_strategy("frozn")
