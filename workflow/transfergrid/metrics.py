"""Test-set metrics of one cell, from its labels and predicted class probabilities.

Everything here describes a cell after training; none of it may be used to choose a recipe (that is
done on validation). The result is a plain dict of floats, ints, strings, lists and ``None`` so that
it can be written with ``json.dump`` as it is.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

ECE_BINS = 15  # Guo et al. (2017) use M = 15 equal-width bins
TOP_K = 5
ROW_SUM_TOLERANCE = 1e-3  # float32 softmax outputs sum to 1 only up to rounding


def _none_if_nan(value: float) -> float | None:
    """JSON has no NaN: an undefined value (e.g. the mean confidence of an empty bin) becomes null."""
    return None if np.isnan(value) else float(value)


def _confidence_bins(labels: np.ndarray, probs: np.ndarray, num_bins: int):
    """(edges, count, mean confidence, accuracy) per bin as arrays; NaN in the empty bins.

    A prediction's confidence is its largest class probability and it is correct when that class
    (the argmax) is the label. Bins are ``num_bins`` equal-width intervals of [0, 1], closed on the
    right as in Guo et al. (2017): bin m holds confidences in ((m-1)/M, m/M].
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # searchsorted on the inner edges with side="left" puts a confidence equal to an edge in the bin
    # that edge closes, i.e. right-closed bins.
    bin_of = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(bin_of, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bin_of, weights=confidence, minlength=num_bins) / count
        accuracy = np.bincount(bin_of, weights=correct.astype(float), minlength=num_bins) / count
    return edges, count, mean_confidence, accuracy


def reliability_bins(labels: np.ndarray, probs: np.ndarray, num_bins: int = ECE_BINS) -> dict:
    """Per-bin data of a reliability diagram: ``edges`` (M + 1 values), and per bin the ``count``,
    the ``confidence`` (mean confidence) and the ``accuracy`` (fraction correct), the last two
    ``None`` for an empty bin. Binning as in ``expected_calibration_error``.
    """
    edges, count, mean_confidence, accuracy = _confidence_bins(labels, probs, num_bins)
    return {
        "edges": [float(e) for e in edges],
        "count": [int(c) for c in count],
        "confidence": [_none_if_nan(c) for c in mean_confidence],
        "accuracy": [_none_if_nan(a) for a in accuracy],
    }


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, num_bins: int = ECE_BINS) -> float:
    """ECE = Σ_b (n_b / N) · |acc_b − conf_b|, over equal-width confidence bins.

    The definition of Guo et al. (2017), "On Calibration of Modern Neural Networks", eq. (3): the
    count-weighted mean gap between accuracy and mean confidence per bin; 0 is perfect calibration.
    Confidence is the largest class probability, a prediction is correct when its argmax is the
    label, and bin m of M holds the confidences in ((m-1)/M, m/M].
    """
    _, count, mean_confidence, accuracy = _confidence_bins(labels, probs, num_bins)
    filled = count > 0
    return float(np.sum(count[filled] / count.sum() * np.abs(accuracy[filled] - mean_confidence[filled])))


def _check_inputs(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0] or labels.ndim != 1:
        raise ValueError(f"need labels [N] and probs [N, C]; got {labels.shape} and {probs.shape}")
    if probs.shape[1] != len(classes):
        raise ValueError(f"probs have {probs.shape[1]} columns for {len(classes)} class names")
    if len(labels) == 0:
        raise ValueError("no test predictions")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"labels must lie in [0, {len(classes)})")
    if not np.allclose(probs.sum(axis=1), 1.0, rtol=0, atol=ROW_SUM_TOLERANCE):
        raise ValueError("probability rows must sum to 1 (pass softmax outputs, not logits)")


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Test-set metrics of one cell; JSON-serialisable.

    ``labels``: int [N] true classes; ``probs``: float [N, C], each row a probability distribution
    over the C ``classes`` (in label order). The predicted class is the argmax. Classes absent from
    ``labels`` still count: every sklearn call gets ``labels=range(C)``.

    Keys: ``num_test``, ``num_classes``, ``classes``; ``top1``; ``balanced_accuracy`` (mean recall
    over the classes present in ``labels``, sklearn's definition); ``macro_f1`` (over all C classes);
    ``top5`` (None unless C > 5: with C <= 5 every label is always in the top five, a vacuous 1.0);
    ``nll`` (mean negative log-likelihood of the true class, natural log); ``ece`` (expected
    calibration error, 15 bins) and ``reliability`` (its per-bin data, see ``reliability_bins``);
    ``per_class``: one ``{"class", "precision", "recall", "f1", "support"}`` per class (0 where
    undefined, e.g. the precision of a never-predicted class); ``confusion``: C × C counts, rows are
    true classes and columns predicted ones.
    """
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    classes = [str(c) for c in classes]
    _check_inputs(labels, probs, classes)
    class_range = list(range(len(classes)))
    preds = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=class_range, zero_division=0)
    top5 = float(top_k_accuracy_score(labels, probs, k=TOP_K, labels=class_range)) if len(classes) > TOP_K else None
    return {
        "num_test": len(labels),
        "num_classes": len(classes),
        "classes": classes,
        "top1": float(accuracy_score(labels, preds)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", labels=class_range, zero_division=0)),
        "top5": top5,
        "nll": float(log_loss(labels, probs, labels=class_range)),
        "ece": expected_calibration_error(labels, probs),
        "reliability": reliability_bins(labels, probs),
        "per_class": [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        ],
        "confusion": confusion_matrix(labels, preds, labels=class_range).tolist(),
    }
