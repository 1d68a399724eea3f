"""PreciseBN: BatchNorm running statistics recomputed on the training rows before validation, so
that a network trained for few steps is not validated on the pretrained source's statistics."""

import pytest
import torch
from helpers import cell_config
from torch import nn

from transfergrid.batches import FeatureBatches
from transfergrid.features import HeadOnlyModel
from transfergrid.loop import (
    PRECISE_BN_AUTO_STEPS,
    fit,
    recompute_batch_norm_statistics,
    recomputes_batch_norm_statistics,
)
from transfergrid.strategies import parse_strategy


def batches_of(x: torch.Tensor, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out, start = [], 0
    for size in sizes:
        out.append((x[start : start + size], torch.zeros(size, dtype=torch.long)))
        start += size
    return out


class PartlyFrozen(nn.Sequential):
    """Its first BatchNorm stays in eval mode when the model trains, as a frozen stage's does."""

    def train(self, mode: bool = True):
        super().train(mode)
        self[0].training = False
        return self


def test_statistics_are_the_size_weighted_average_over_the_training_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Dropout(0.5), nn.Linear(3, 2))
    model[0].running_mean.fill_(100.0)  # stale: the "pretrained source's" statistics
    x = torch.randn(14, 3) * 2 + 5
    sizes = [6, 5, 2, 1]  # the single row is skipped: it has no variance
    rng_before = torch.get_rng_state()
    assert recompute_batch_norm_statistics(model, batches_of(x, sizes)) == 1
    used = [x[0:6], x[6:11], x[11:13]]
    mean = sum(b.mean(0) * len(b) for b in used) / 13
    var = sum(b.var(0, unbiased=True) * len(b) for b in used) / 13
    torch.testing.assert_close(model[0].running_mean, mean)
    torch.testing.assert_close(model[0].running_var, var)
    # Restored: momentum, the update counter, eval mode; no random number drawn (dropout stayed off).
    assert model[0].momentum == 0.1 and int(model[0].num_batches_tracked) == 0
    assert not model.training and not model[0].training
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_batch_norms_of_frozen_parts_are_left_alone():
    model = PartlyFrozen(nn.BatchNorm1d(3), nn.BatchNorm1d(3))
    x = torch.randn(8, 3) + 3
    assert recompute_batch_norm_statistics(model, batches_of(x, [4, 4])) == 1
    assert torch.equal(model[0].running_mean, torch.zeros(3))
    assert not torch.equal(model[1].running_mean, torch.zeros(3))


def test_a_model_without_training_batch_norms_is_unchanged():
    model = nn.Sequential(nn.Linear(3, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert recompute_batch_norm_statistics(model, batches_of(torch.randn(4, 3), [4])) == 0
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("mode", "updates", "expected"),
    [
        ("auto", 0, True),
        ("auto", PRECISE_BN_AUTO_STEPS - 1, True),
        ("auto", PRECISE_BN_AUTO_STEPS, False),
        ("always", 10_000, True),
        ("never", 0, False),
    ],
)
def test_when_statistics_are_recomputed(mode, updates, expected):
    assert recomputes_batch_norm_statistics(mode, updates) is expected


def fitted_statistics(mode: str, epochs: int, rows: int = 16) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The best state's running mean of a BatchNorm-first head trained on inputs of mean 5, those
    inputs, and the fit's log; 2 steps an epoch (batch 8)."""
    torch.manual_seed(0)
    features = torch.randn(rows, 4) + 5
    labels = (features[:, 0] > 5).long()
    model = HeadOnlyModel(nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2)), 0, 1)
    settings = cell_config(epochs=epochs, batch_size=8, precise_bn=mode)
    train = FeatureBatches(features, labels, torch.arange(rows), 8, torch.device("cpu"), seed=0)
    val = FeatureBatches(features, labels, torch.arange(rows), 8, torch.device("cpu"))
    log = []
    statistics = train.in_row_order()
    result = fit(model, parse_strategy("frozen"), train, val, settings, log.append, statistics_batches=statistics)
    return result.best_state["head.0.running_mean"], features, log


def recomputed_epochs(log: list[str]) -> list[int]:
    return [int(line.split(":")[0].split()[1]) for line in log if "BatchNorm statistics" in line]


def test_fit_validates_on_statistics_of_the_training_rows_while_they_are_young():
    recomputed, features, log = fitted_statistics("auto", epochs=2)
    torch.testing.assert_close(recomputed, features.mean(0))
    assert recomputed_epochs(log) == [1, 2]
    # The running average after 4 steps still weighs its starting zeros by 0.9 ** 4 = 0.66.
    running, _, log = fitted_statistics("never", epochs=2)
    assert (running < 0.5 * features.mean(0)).all() and recomputed_epochs(log) == []


def test_auto_stops_once_the_running_averages_are_reliable():
    # 2 steps an epoch: after epoch 24 the layers have had 48 updates, after epoch 25 50.
    _, _, log = fitted_statistics("auto", epochs=30)
    assert recomputed_epochs(log) == list(range(1, 25))
    _, _, log = fitted_statistics("always", epochs=30)
    assert recomputed_epochs(log) == list(range(1, 31))


def test_the_pass_runs_the_class_forward_not_a_compiled_one_set_on_the_instance():
    model = nn.Sequential(nn.BatchNorm1d(3))

    def compiled_forward(_x):
        raise AssertionError("the statistics pass must not run the instance's (compiled) forward")

    model.forward = compiled_forward
    assert recompute_batch_norm_statistics(model, batches_of(torch.randn(4, 3) + 2, [4])) == 1


class BaseThenHead(nn.Module):
    """A BatchNorm 'base' that trains only when the phase unfreezes it, and a BatchNorm head."""

    def __init__(self):
        super().__init__()
        self.base, self.head = nn.BatchNorm1d(4), nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2))
        self.base_trains = False

    def forward(self, x):
        return self.head(self.base(x))

    def apply_phase(self, phase) -> None:
        self.base_trains = not phase.whole_base
        self.base.requires_grad_(self.base_trains)

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.training = mode and self.base_trains
        return self

    def parameter_counts(self) -> dict:
        return {"trainable_params": 0, "frozen_params": 0, "total_params": 0}


def test_a_layer_that_starts_training_late_is_young_until_it_has_had_its_own_updates():
    # two_phase: the head alone for 20 epochs (40 updates of the head's BatchNorm), then the base
    # too. Epochs 1-24 recompute for the head (under 50 updates); from epoch 21 the base's
    # BatchNorm is new, so epochs 21-44 recompute until it too has had 50 updates.
    torch.manual_seed(0)
    features = torch.randn(16, 4) + 5
    labels = (features[:, 0] > 5).long()
    settings = cell_config(epochs=50, batch_size=8, strategy="two_phase", strategy_options={"head_epochs": 20})
    train = FeatureBatches(features, labels, torch.arange(16), 8, torch.device("cpu"), seed=0)
    val = FeatureBatches(features, labels, torch.arange(16), 8, torch.device("cpu"))
    log = []
    strategy = parse_strategy("two_phase", {"head_epochs": 20})
    fit(BaseThenHead(), strategy, train, val, settings, log.append, statistics_batches=train.in_row_order())
    assert recomputed_epochs(log) == list(range(1, 45))
    assert [line for line in log if "epoch 21:" in line and "BatchNorm" in line] == [
        "epoch 21: BatchNorm statistics of 2 layer(s) recomputed on the training rows"
    ]
