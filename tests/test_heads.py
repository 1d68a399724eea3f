"""Heads: shapes, trainability, the mlp's layer order, the svm's loss, logreg's choice of C."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from transfergrid.heads import (
    HEADS,
    POOLED,
    SPATIAL,
    build_head,
    check_head_options,
    check_head_strategy,
    head_input_size,
    make_loss,
    standardizes_features,
)
from transfergrid.layers import BatchNorm1d
from transfergrid.logreg import fit_logreg


def separable(n=96, features=16, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, features, generator=generator)
    labels = torch.arange(n) % classes
    return centres[labels] + 0.5 * torch.randn(n, features, generator=generator), labels


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_has_the_right_shape_and_learns(name):
    torch.manual_seed(0)
    x, y = separable()
    head = build_head(name, 16, 3)
    assert head(x).shape == (96, 3)
    loss_fn = make_loss(name, 0.0)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9)
    head.train()
    losses = []
    for step in range(20):
        batch = slice((step % 4) * 24, (step % 4 + 1) * 24)
        loss = loss_fn(head(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    head.eval()
    assert (head(x).argmax(1) == y).float().mean() > 0.9


def test_mlp_layer_order_and_configured_widths():
    head = build_head("mlp", 10, 4, {"hidden": [32, 16], "dropout": 0.25})
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.ReLU, BatchNorm1d, nn.Dropout] * 2 + [nn.Linear]
    assert all(isinstance(m, nn.BatchNorm1d) for m in head if isinstance(m, BatchNorm1d))
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 32), (32, 16), (16, 4)]
    assert [m.num_features for m in head if isinstance(m, nn.BatchNorm1d)] == [32, 16]
    assert all(m.p == 0.25 for m in head if isinstance(m, nn.Dropout))
    default = build_head("mlp", 10, 4)
    assert default[0].out_features == 512 and default[3].p == 0.5


def test_mlp_trains_on_a_last_batch_of_one_row():
    head = build_head("mlp", 6, 2, {"hidden": [8]})
    head.train()
    before = head[2].running_mean.clone()
    assert head(torch.randn(1, 6)).shape == (1, 2)
    assert torch.equal(head[2].running_mean, before)  # a single row does not move the statistics


def test_unknown_head_option_is_named():
    with pytest.raises(ValueError, match="widths"):
        build_head("mlp", 4, 2, {"widths": [8]})
    check_head_options("logreg", {"C": [1.0], "max_iter": 500})


def test_svm_loss_is_the_weston_watkins_hinge():
    scores = torch.tensor([[2.0, 1.5, -1.0], [0.0, 0.2, 0.1]])
    labels = torch.tensor([0, 2])
    # sample 0: margins 1 - 2 + 1.5 = 0.5, 1 - 2 - 1 < 0 -> 0; sample 1: 1 - 0.1 + 0 = 0.9,
    # 1 - 0.1 + 0.2 = 1.1; each summed over wrong classes, divided by C = 3, mean over the batch.
    expected = ((0.5 + 0.0) / 3 + (0.9 + 1.1) / 3) / 2
    loss = make_loss("svm", label_smoothing=0.3)  # label smoothing has no meaning for a hinge
    assert loss(scores, labels).item() == pytest.approx(expected)
    assert isinstance(make_loss("linear", 0.1), nn.CrossEntropyLoss)
    assert make_loss("mlp", 0.1).label_smoothing == 0.1


def test_head_specs_declare_input_and_fitting():
    assert HEADS["gap"].input == SPATIAL and HEADS["linear"].input == POOLED
    assert HEADS["logreg"].frozen_only and HEADS["logreg"].fit == "sklearn"
    assert not HEADS["svm"].frozen_only and HEADS["svm"].fit == "sgd"

    class FakeBackbone:
        num_features, feature_channels = 4096, 512

    assert head_input_size("gap", FakeBackbone()) == 512
    assert head_input_size(HEADS["linear"], FakeBackbone()) == 4096
    check_head_strategy("logreg", "frozen")
    with pytest.raises(ValueError, match="frozen"):
        check_head_strategy("logreg", "full")


def noisy_problem(seed=0, n_train=40, n_val=400, features=30):
    """Two classes whose 30 features each carry a weak signal, on very different scales, with a
    fifth of the training labels flipped: a weakly regularised fit memorises the flips, a strongly
    regularised one averages the weak signals."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 5, size=features)

    def draw(n):
        y = np.arange(n) % 2
        x = (2 * y[:, None] - 1) * 0.25 + rng.normal(size=(n, features))
        return x * scale + 3, y

    (train_x, train_y), val = draw(n_train), draw(n_val)
    train_y[: n_train // 5] = 1 - train_y[: n_train // 5]
    return (train_x, train_y), val


def test_logreg_chooses_a_small_C_on_validation_and_reproduces_sklearn():
    (train_x, train_y), (val_x, val_y) = noisy_problem()
    grid = [0.001, 0.01, 100.0, 1000.0]
    linear, chosen, val_acc = fit_logreg(train_x, train_y, val_x, val_y, grid, seed=0)
    assert set(val_acc) == set(grid)
    assert chosen <= 0.01 and val_acc[chosen] > val_acc[1000.0] + 0.1
    assert chosen == max(val_acc, key=lambda c: (val_acc[c], -c))

    scaler = StandardScaler().fit(train_x)
    reference = LogisticRegression(C=chosen, solver="lbfgs", max_iter=2000).fit(scaler.transform(train_x), train_y)
    expected = reference.predict_proba(scaler.transform(val_x))
    logits = linear(torch.as_tensor(val_x, dtype=torch.float32))
    assert isinstance(linear, nn.Linear) and logits.shape == (len(val_x), 2)
    assert np.array_equal(logits.argmax(1).numpy(), expected.argmax(1))
    assert np.allclose(logits.softmax(1).detach().numpy(), expected, atol=1e-4)


def test_logreg_multiclass_linear_on_raw_features_matches_predict_proba():
    x, y = separable(n=120, features=8, classes=4)
    x = x * torch.tensor([1, 10, 100, 0.1, 1, 1, 5, 50.0]) + 7  # scales the folded scaler must undo
    linear, chosen, _ = fit_logreg(x[:80], y[:80], x[80:], y[80:], [0.01, 1.0])
    scaler = StandardScaler().fit(x[:80].numpy())
    reference = LogisticRegression(C=chosen, max_iter=2000).fit(scaler.transform(x[:80].numpy()), y[:80].numpy())
    expected = reference.predict_proba(scaler.transform(x.numpy()))
    probs = linear(x).softmax(1).detach().numpy()
    assert np.array_equal(probs.argmax(1), expected.argmax(1))
    assert np.allclose(probs, expected, atol=1e-4)


def test_logreg_ties_go_to_the_smaller_C():
    x, y = separable(n=60, features=4, classes=2)
    _, chosen, val_acc = fit_logreg(x[:40], y[:40], x[40:], y[40:], [10.0, 1.0, 0.1])
    assert set(val_acc.values()) == {1.0} and chosen == 0.1


def test_sgd_heads_on_a_frozen_base_read_standardised_features():
    assert [standardizes_features(h, "frozen") for h in ("linear", "mlp", "gap", "svm", "logreg")] == [
        True,
        True,
        True,
        True,
        False,  # logreg standardises inside its scikit-learn fit
    ]
    assert not any(standardizes_features("linear", s) for s in ("full", "freeze:2", "two_phase", "scratch"))


@pytest.mark.parametrize("name", ["linear", "svm"])
def test_standardised_heads_learn_features_of_any_scale(name):
    """Features at the scale of a random-init ResNet's (1e4, all positive): at the frozen rate, the raw head's loss
    explodes while the standardised one learns; in evaluation it uses the training statistics."""
    x, y = separable()
    x = 1e3 * (x + 30)  # positive, with a large shared offset, as pooled ReLU features are

    def train(standardize):
        torch.manual_seed(0)
        head = build_head(name, 16, 3, standardize=standardize)
        optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
        loss_fn = make_loss(name, 0.0)
        head.train()
        for _ in range(3):
            for rows in torch.arange(96).split(32):
                optimizer.zero_grad()
                loss = loss_fn(head(x[rows]), y[rows])
                loss.backward()
                optimizer.step()
        return head.eval(), loss.item()

    _, raw_loss = train(False)
    standardised, loss = train(True)
    if name == "linear":
        assert not raw_loss < 1e3
    assert loss < 0.5
    assert (standardised(x).argmax(1) == y).float().mean() > 0.95
    norm = standardised[0]
    assert torch.allclose(norm.running_mean, x.mean(0), rtol=1e-4)
