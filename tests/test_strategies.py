"""What each strategy trains, checked tensor by tensor after real optimisation steps."""

import pytest
import torch
from helpers import cell_config, changed_keys, random_batches, snapshot

from transfergrid.loop import fit
from transfergrid.model import build_model
from transfergrid.strategies import parse_strategy

BACKBONES = ["resnet18", "efficientnet_lite0"]


def train_briefly(backbone, strategy, **cell_overrides):
    cell = cell_config(backbone=backbone, strategy=strategy, **cell_overrides)
    torch.manual_seed(0)
    model = build_model(cell, num_classes=3, weights_file=None)
    before = snapshot(model)
    strategy_object = parse_strategy(strategy, cell.strategy_options)
    result = fit(model, strategy_object, random_batches(), random_batches(train=False), cell, log=lambda m: None)
    return model, before, snapshot(model), result


@pytest.mark.parametrize("backbone", BACKBONES)
def test_frozen_leaves_every_backbone_tensor_bit_identical(backbone):
    model, before, after, result = train_briefly(backbone, "frozen")
    changed = changed_keys(before, after)
    backbone_keys = {k for k in before if k.startswith("backbone.")}
    assert any("running_mean" in k for k in backbone_keys)  # BatchNorm buffers are part of the check
    assert changed & backbone_keys == set()
    # the head: its linear layer after the parameter-free standardisation, whose statistics move
    assert {"head.1.weight", "head.1.bias", "head.0.running_mean", "head.0.running_var"} <= changed
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
    _model, before, after, _ = train_briefly("resnet18", "frozen", train_bn=True)
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


# ---------------------------------------------------------------------------------------------
# Every strategy of the source material, on resnet18 (stages: stem, layer1, layer2, layer3, layer4)

STAGE_PREFIXES = [
    ("backbone.net.conv1.", "backbone.net.bn1."),
    ("backbone.net.layer1.",),
    ("backbone.net.layer2.",),
    ("backbone.net.layer3.",),
    ("backbone.net.layer4.",),
]


def keys_of_stages(keys, stages):
    return {k for k in keys if any(k.startswith(p) for s in stages for p in STAGE_PREFIXES[s])}


def float_keys(state):
    """Tensors that training may change (num_batches_tracked counters aside)."""
    return {k for k, v in state.items() if v.is_floating_point()}


@pytest.mark.parametrize(
    "strategy, epochs, frozen_stages",
    [
        ("scratch", 1, []),
        ("full", 1, []),
        ("frozen", 1, [0, 1, 2, 3, 4]),
        ("freeze:2", 1, [0, 1]),
        ("freeze:4", 1, [0, 1, 2, 3]),
        ("two_phase", 2, []),  # phase 2 unfreezes everything
        ("gradual", 3, [0, 1, 2]),  # head, then layer4, then layer3: three stages never thawed
    ],
)
def test_each_strategy_changes_exactly_its_trainable_part(strategy, epochs, frozen_stages):
    model, before, after, result = train_briefly(
        "resnet18", strategy, epochs=epochs, strategy_options={"head_epochs": 1} if strategy == "two_phase" else {}
    )
    changed = changed_keys(before, after)
    frozen = keys_of_stages(before, frozen_stages)
    assert changed & frozen == set(), "frozen stages (weights and BatchNorm buffers) must be bit-identical"
    assert float_keys(before) - frozen - changed == set(), "everything not frozen must have trained"
    frozen_numel = sum(before[k].numel() for k in frozen if k in dict(model.named_parameters()))
    assert result.parameter_counts["frozen_params"] == frozen_numel
    assert result.parameter_counts["trainable_params"] == sum(p.numel() for p in model.parameters()) - frozen_numel


def test_two_phase_rebuilds_the_optimizer_and_switches_learning_rate():
    model, _, _, result = train_briefly(
        "resnet18", "two_phase", epochs=3, strategy_options={"head_epochs": 2, "head_lr": 1e-2, "finetune_lr": 1e-4}
    )
    head_numel = sum(p.numel() for p in model.head.parameters())
    total = sum(p.numel() for p in model.parameters())
    phases = [(row["phase"], row["lr"], row["optimizer_params"], row["trainable_params"]) for row in result.history]
    assert phases == [
        ("head", 1e-2, head_numel, head_numel),
        ("head", 1e-2, head_numel, head_numel),
        ("finetune", 1e-4, total, total),
    ]


def test_gradual_unfreezes_one_stage_from_the_top_every_m_epochs():
    strategy = parse_strategy("gradual", {"epochs_per_stage": 2})
    frozen = [(p.whole_base, p.frozen_stages) for p in (strategy.phase(e, 5) for e in range(8))]
    assert frozen == [(True, 5), (True, 5), (False, 4), (False, 4), (False, 3), (False, 3), (False, 2), (False, 2)]


def test_discriminative_learning_rates_decrease_towards_the_input():
    from transfergrid.model import build_model
    from transfergrid.optim import build_optimizer, set_learning_rate

    cell = cell_config(discriminative_lr=0.5)
    model = build_model(cell, 3, None)
    model.apply_phase(parse_strategy("full").phase(0, model.num_stages))
    optimizer = build_optimizer(model, cell, lr=0.1)
    set_learning_rate(optimizer, 0.1)
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert lrs == pytest.approx([0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125])
    head_group = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert {id(p) for p in model.head.parameters()} <= head_group
    assert {id(p) for p in model.backbone.net.layer4.parameters()} == {
        id(p) for p in optimizer.param_groups[1]["params"]
    }
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_early_stopping_ends_training_after_patience_epochs_without_progress():
    _, _, _, result = train_briefly(
        "resnet18",
        "frozen",
        epochs=6,
        early_stopping_patience=2,
        optimizer={"name": "sgd", "lr": 0.0, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    )
    assert len(result.history) == 3 and result.best_epoch == 1


@pytest.mark.parametrize("name", ["freeze", "freeze:x", "two_phase:3", "gradual:"])
def test_malformed_strategy_names_are_rejected(name):
    with pytest.raises(ValueError):
        parse_strategy(name)


def test_freeze_deeper_than_the_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match=r"freeze:9.*5"):
        parse_strategy("freeze:9").phase(0, 5)
