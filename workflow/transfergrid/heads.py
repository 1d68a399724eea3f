"""Classification heads: a registry of builders from (input size, class count, options) to a module.

Each ``HeadSpec`` says what the head consumes (``input``), which loss trains it (``loss``), whether
it only makes sense on a frozen base (``frozen_only``) and how it is fitted (``fit``):

- ``linear``: Linear on the backbone's native pooled vector.
- ``mlp``: (Linear -> ReLU -> BatchNorm1d -> Dropout) per hidden width, then Linear.
- ``gap``: global average pooling of the backbone's last feature map + Linear. For backbones whose
  native pooled vector already went through FC layers (VGG), this bypasses them.
- ``svm``: a Linear trained with the multi-class squared hinge (see ``make_loss``); its L2 term is
  the optimizer's weight decay. Usable with any strategy.
- ``logreg``: L2 logistic regression fitted by scikit-learn (lbfgs) on cached features, not by SGD
  (``fit_logreg``), frozen strategy only. The result is an ordinary ``nn.Linear``, so a logreg
  cell's model is a plain TransferModel with a linear head.

Adding a head is one ``HEADS`` entry.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

POOLED = "pooled"  # backbone(x): the backbone's native pooled vector, num_features wide
SPATIAL = "spatial"  # backbone.global_average(backbone.forward_features(x)), feature_channels wide
DEFAULT_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class HeadSpec:
    name: str
    build: Callable[[int, int, dict], nn.Module]
    loss: str = "cross_entropy"  # "cross_entropy" or "squared_hinge" (see make_loss)
    input: str = POOLED  # POOLED or SPATIAL
    frozen_only: bool = False  # only valid with the frozen strategy
    fit: str = "sgd"  # "sgd": the epoch loop; "sklearn": fit_logreg on cached features
    options: tuple[str, ...] = ()  # option keys the head accepts (train.head_options.<name>)


def _linear(num_features: int, num_classes: int, options: dict) -> nn.Module:
    return nn.Linear(num_features, num_classes)


class BatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that tolerates a training batch of one row (a last partial batch of size 1):
    such a batch is normalised with the running statistics, which it leaves untouched, instead of
    raising. Same parameters and state-dict keys as ``nn.BatchNorm1d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1 and self.track_running_stats:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


def _mlp(num_features: int, num_classes: int, options: dict) -> nn.Module:
    hidden = options.get("hidden", [512])
    hidden = [hidden] if isinstance(hidden, int) else list(hidden)
    dropout = float(options.get("dropout", 0.5))
    if not hidden or any(int(w) < 1 for w in hidden) or not 0 <= dropout <= 1:
        raise ValueError(f"mlp head: hidden must be positive widths and 0 <= dropout <= 1, got {options}")
    layers, width = [], num_features
    for out in map(int, hidden):
        layers += [nn.Linear(width, out), nn.ReLU(inplace=True), BatchNorm1d(out), nn.Dropout(dropout)]
        width = out
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


HEADS: dict[str, HeadSpec] = {
    spec.name: spec
    for spec in (
        HeadSpec("linear", _linear),
        HeadSpec("mlp", _mlp, options=("hidden", "dropout")),
        HeadSpec("gap", _linear, input=SPATIAL),
        HeadSpec("svm", _linear, loss="squared_hinge"),
        HeadSpec("logreg", _linear, frozen_only=True, fit="sklearn", options=("C", "max_iter")),
    )
}


def check_head_options(name: str, options: dict | None) -> None:
    """ValueError naming the accepted keys when ``options`` has a key the head does not know."""
    unknown = set(options or {}) - set(HEADS[name].options)
    if unknown:
        raise ValueError(f"head {name!r} has no option(s) {sorted(unknown)}; valid: {list(HEADS[name].options)}")


def check_head_strategy(name: str, strategy: str) -> None:
    """ValueError when a frozen-only head (logreg) is combined with a strategy that trains the base."""
    if HEADS[name].frozen_only and strategy != "frozen":
        raise ValueError(f"head {name!r} is fitted on cached features and needs strategy 'frozen', got {strategy!r}")


def build_head(name: str, num_features: int, num_classes: int, options: dict | None = None) -> nn.Module:
    """``num_features`` is the head's input width: use ``head_input_size`` to get it from a backbone."""
    check_head_options(name, options)
    return HEADS[name].build(num_features, num_classes, options or {})


def _spec(head: str | HeadSpec) -> HeadSpec:
    return HEADS[head] if isinstance(head, str) else head


def head_input_size(head: str | HeadSpec, backbone) -> int:
    """The width of what the head consumes: ``num_features`` (pooled) or ``feature_channels`` (spatial)."""
    return backbone.feature_channels if _spec(head).input == SPATIAL else backbone.num_features


# ----------------------------------------------------------------------------------------------
# Losses


def make_loss(head_name: str, label_smoothing: float = 0.0) -> nn.Module:
    """The training (and validation) loss of a head.

    ``cross_entropy`` heads use CrossEntropyLoss with label smoothing. ``svm`` uses the Weston-Watkins
    multi-class squared hinge, ``nn.MultiMarginLoss(p=2, margin=1)``:
    ``sum_{j != y} max(0, 1 - s_y + s_j)^2 / C`` per sample, averaged over the batch. Chosen over
    one-vs-rest because it is a single multi-class objective on the same scores the argmax
    prediction compares, and over Crammer-Singer (max over j) because every margin-violating class
    gets a gradient, which suits mini-batch SGD; it is also built into torch. Label smoothing has no
    meaning for a hinge and is ignored there.
    """
    loss = HEADS[head_name].loss
    if loss == "squared_hinge":
        return nn.MultiMarginLoss(p=2, margin=1.0)
    if loss == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    raise ValueError(f"head {head_name!r} has unknown loss {loss!r}")


# ----------------------------------------------------------------------------------------------
# logreg: scikit-learn on cached features


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def fit_logreg(
    train_x,
    train_y,
    val_x,
    val_y,
    C_grid: Sequence[float] = DEFAULT_C_GRID,
    seed: int = 0,
    num_classes: int | None = None,
    max_iter: int = 2000,
) -> tuple[nn.Linear, float, dict[float, float]]:
    """L2 multinomial logistic regression (lbfgs) per C on train; C chosen on val accuracy.

    Features are standardised (so one C grid means the same across backbones and lbfgs converges);
    the scaler is folded into the returned ``nn.Linear``, which therefore applies to raw features and
    gives logits whose softmax equals scikit-learn's ``predict_proba``. Ties in val accuracy go to
    the smaller C (stronger regularisation). Returns (linear, chosen C, {C: val accuracy}).

    A class absent from ``train_y`` (only possible with ``num_classes``) gets a zero weight row and a
    bias of -1e4, so it is never predicted.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    train_x, val_x = _as_numpy(train_x).astype(np.float64), _as_numpy(val_x).astype(np.float64)
    train_y, val_y = _as_numpy(train_y).astype(np.int64), _as_numpy(val_y).astype(np.int64)
    num_classes = int(num_classes if num_classes is not None else max(train_y.max(), val_y.max()) + 1)
    scaler = StandardScaler().fit(train_x)
    train_z, val_z = scaler.transform(train_x), scaler.transform(val_x)
    fits, val_acc = {}, {}
    # One regularisation path from strong to weak: each fit starts from the previous solution
    # (warm start), which cuts lbfgs iterations several-fold without changing the optimum.
    classifier = LogisticRegression(l1_ratio=0.0, solver="lbfgs", max_iter=max_iter, random_state=seed, warm_start=True)
    for C in sorted(float(c) for c in C_grid):
        classifier.set_params(C=C)
        # Feature matrices of a few thousand rows are too small for threaded BLAS: one thread
        # measured 2.3x faster than two on a 2-core machine (1.4 s against 3.3 s for six C values).
        with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(train_z, train_y)
        fits[C] = copy.deepcopy(classifier)
        val_acc[C] = float((classifier.predict(val_z) == val_y).mean())
    best_C = max(val_acc, key=lambda c: (val_acc[c], -c))  # ties -> smaller C
    return _linear_from_sklearn(fits[best_C], scaler, num_classes), best_C, val_acc


def _linear_from_sklearn(classifier, scaler, num_classes: int) -> nn.Linear:
    """An nn.Linear on raw features equal to ``classifier`` applied after ``scaler``."""
    coef, intercept = classifier.coef_, classifier.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one logit z for classes_[1]; softmax([-z/2, z/2]) = sigmoid(z)
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    # z = (x - mean) / scale  =>  W z + b = (W / scale) x + (b - (W / scale) mean)
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    full_weight = np.zeros((num_classes, coef.shape[1]))
    full_bias = np.full(num_classes, -1e4)
    full_weight[classifier.classes_], full_bias[classifier.classes_] = weight, bias
    linear = nn.Linear(coef.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(full_weight))
        linear.bias.copy_(torch.from_numpy(full_bias))
    return linear


def logreg_c_grid(options: dict | None) -> list[float]:
    grid = list((options or {}).get("C", DEFAULT_C_GRID))
    if not grid or any(not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0) for c in grid):
        raise ValueError(f"logreg option C must be positive numbers, got {grid}")
    return [float(c) for c in grid]
