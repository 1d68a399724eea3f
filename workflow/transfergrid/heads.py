"""Classification heads: a registry of specs, each naming what the head consumes, how it is trained
and the builder that makes its module. Torch-free at import (Snakemake parses the workflow with it);
builders import torch when they run.

- ``linear``: Linear on the backbone's native pooled vector.
- ``mlp``: (Linear -> ReLU -> BatchNorm1d -> Dropout) per hidden width, then Linear.
- ``gap``: global average pooling of the backbone's last feature map + Linear. For backbones whose
  native pooled vector already went through FC layers (VGG), this bypasses them.
- ``svm``: a Linear trained with the multi-class hinge (see ``make_loss``); its L2 term is
  the optimizer's weight decay. Usable with any strategy.
- ``logreg``: L2 logistic regression fitted by scikit-learn (lbfgs) on cached features, not by SGD
  (``logreg.fit_logreg``), frozen strategy only. The result is an ordinary ``nn.Linear``, so a
  logreg cell's model is a plain TransferModel with a linear head.

A head that SGD trains on a frozen base reads standardised features (``standardizes_features``).

Adding a head is one ``HEADS`` entry (and its builder in ``layers`` if it is a new module).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

POOLED = "pooled"  # backbone(x): the backbone's native pooled vector, num_features wide
SPATIAL = "spatial"  # backbone.global_average(backbone.forward_features(x)), feature_channels wide


@dataclass(frozen=True)
class HeadSpec:
    name: str
    builder: str  # "module:function" in this package, called as builder(num_features, num_classes, options)
    loss: str = "cross_entropy"  # "cross_entropy" or "hinge" (see make_loss)
    input: str = POOLED  # POOLED or SPATIAL
    frozen_only: bool = False  # only valid with the frozen strategy
    fit: str = "sgd"  # "sgd": the epoch loop; "sklearn": logreg.fit_logreg on cached features
    options: tuple[str, ...] = ()  # option keys the head accepts (train.head_options.<name>)

    def build(self, num_features: int, num_classes: int, options: dict):
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), function)(num_features, num_classes, options)


HEADS: dict[str, HeadSpec] = {
    spec.name: spec
    for spec in (
        HeadSpec("linear", "layers:linear_head"),
        HeadSpec("mlp", "layers:mlp_head", options=("hidden", "dropout")),
        HeadSpec("gap", "layers:linear_head", input=SPATIAL),
        HeadSpec("svm", "layers:linear_head", loss="hinge"),
        HeadSpec("logreg", "layers:linear_head", frozen_only=True, fit="sklearn", options=("C", "max_iter")),
    )
}


def fitted_by_gradient_descent(name: str) -> bool:
    """Whether the head is trained by the epoch loop at a learning rate; a closed-form head (logreg)
    chooses its own regularisation instead, so it has no learning rate to search or report."""
    return HEADS[name].fit == "sgd"


def check_head_options(name: str, options: dict | None) -> None:
    """ValueError naming the accepted keys when ``options`` has a key the head does not know."""
    unknown = set(options or {}) - set(HEADS[name].options)
    if unknown:
        raise ValueError(f"head {name!r} has no option(s) {sorted(unknown)}; valid: {list(HEADS[name].options)}")


def check_head_strategy(name: str, strategy: str) -> None:
    """ValueError when a frozen-only head (logreg) is combined with a strategy that trains the base."""
    if HEADS[name].frozen_only and strategy != "frozen":
        raise ValueError(f"head {name!r} is fitted on cached features and needs strategy 'frozen', got {strategy!r}")


def standardizes_features(name: str, strategy: str) -> bool:
    """Whether the head reads its features through a parameter-free BatchNorm (``layers.standardized``).

    Frozen features differ in scale by orders of magnitude between backbones: pooled features of a
    random-init ResNet-18 reach 1e4 and more, ImageNet features are O(1). One learning rate per
    strategy cannot suit both: on the raw random features a linear head at the frozen rate stays
    near chance and the svm head's loss reached 3e15 (measured on digits). Standardising them, as
    linear probes usually do (MAE's probe puts an affine-free BatchNorm before its linear layer),
    makes the rate mean the same on every base. Only when the base never trains: a fine-tuned base
    adapts its own scale. ``logreg`` standardises inside its scikit-learn fit instead.
    """
    return strategy == "frozen" and fitted_by_gradient_descent(name)


def build_head(name: str, num_features: int, num_classes: int, options: dict | None = None, standardize: bool = False):
    """``num_features`` is the head's input width: use ``head_input_size`` to get it from a backbone.
    ``standardize``: see ``standardizes_features``."""
    check_head_options(name, options)
    head = HEADS[name].build(num_features, num_classes, options or {})
    if standardize:
        from .layers import standardized

        return standardized(head, num_features)
    return head


def build_cell_head(settings, num_features: int, num_classes: int):
    """A cell's fresh head (``settings``: a CellSettings), standardising its input where
    ``standardizes_features`` says so: the network and the cached-features path both build it here,
    so the two stay the same experiment."""
    standardize = standardizes_features(settings.head, settings.strategy)
    return build_head(settings.head, num_features, num_classes, settings.head_options, standardize=standardize)


def head_input_size(head: str | HeadSpec, backbone) -> int:
    """The width of what the head consumes: ``num_features`` (pooled) or ``feature_channels`` (spatial)."""
    spec = HEADS[head] if isinstance(head, str) else head
    return backbone.feature_channels if spec.input == SPATIAL else backbone.num_features


def make_loss(head_name: str, label_smoothing: float = 0.0):
    """The training (and validation) loss of a head.

    ``cross_entropy`` heads use CrossEntropyLoss with label smoothing. ``svm`` uses the Weston-Watkins
    multi-class hinge, ``nn.MultiMarginLoss(p=1, margin=1)``:
    ``sum_{j != y} max(0, 1 - s_y + s_j) / C`` per sample, averaged over the batch. Chosen over
    one-vs-rest because it is a single multi-class objective on the same scores the argmax
    prediction compares, and over Crammer-Singer (max over j) because every margin-violating class
    gets a gradient, which suits mini-batch SGD; it is also built into torch. Not squared: the
    squared hinge's gradient grows with the violation, and at the frozen strategy's rate it diverged
    on standardised 512-wide features (loss 240 by epoch 3 on digits) where the plain hinge, whose
    gradient is bounded as cross entropy's is, trains at the same rates as the other heads. Label
    smoothing has no meaning for a hinge and is ignored there.
    """
    from torch import nn

    loss = HEADS[head_name].loss
    if loss == "hinge":
        return nn.MultiMarginLoss(p=1, margin=1.0)
    if loss == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    raise ValueError(f"head {head_name!r} has unknown loss {loss!r}")
