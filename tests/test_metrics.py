"""Test-set metrics on constructed predictions whose values are computed by hand."""

import json
import math

import numpy as np
import pytest

from transfergrid.metrics import classification_metrics, expected_calibration_error, reliability_bins


def one_hot_rows(preds, confidence, num_classes):
    """Rows giving ``confidence`` to the predicted class and the rest spread evenly over the others."""
    probs = np.full((len(preds), num_classes), (1 - confidence) / (num_classes - 1))
    probs[np.arange(len(preds)), preds] = confidence
    return probs


def test_ece_overconfident_predictions():
    # Ten predictions of class 0 at confidence 0.9, seven of them right: |0.7 - 0.9| = 0.2.
    probs = one_hot_rows([0] * 10, 0.9, 3)
    labels = np.array([0] * 7 + [1, 2, 1])
    assert expected_calibration_error(labels, probs) == pytest.approx(0.2)
    bins = reliability_bins(labels, probs)
    assert len(bins["edges"]) == 16 and len(bins["count"]) == 15
    assert bins["count"][13] == 10 and sum(bins["count"]) == 10  # 0.9 lies in (13/15, 14/15]
    assert bins["confidence"][13] == pytest.approx(0.9)
    assert bins["accuracy"][13] == pytest.approx(0.7)
    assert bins["accuracy"][0] is None and bins["confidence"][0] is None


def test_ece_zero_for_calibrated_bins():
    # Bin (0.533, 0.6]: five predictions at 0.6, three right. Last bin: five at 1.0, all right.
    probs = np.vstack([one_hot_rows([0] * 5, 0.6, 2), one_hot_rows([1] * 5, 1.0, 2)])
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    assert expected_calibration_error(labels, probs) == pytest.approx(0.0, abs=1e-12)
    assert reliability_bins(labels, probs)["count"][14] == 5


def test_ece_weights_bins_by_count():
    # Bin at 0.9 (8 predictions, 4 right: gap 0.5) and bin at 0.5 (2 predictions, 1 right: gap 0).
    probs = np.vstack([one_hot_rows([0] * 8, 0.9, 2), one_hot_rows([0] * 2, 0.5, 2)])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])
    assert expected_calibration_error(labels, probs) == pytest.approx(0.8 * 0.4 + 0.2 * 0.0)


def test_top5_on_ranked_predictions():
    # Seven classes with fixed decreasing scores; each row's true label sits at a chosen rank.
    scores = np.array([0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05])
    true_rank = [0, 2, 4, 5, 6]  # ranks 0, 2 and 4 are in the top five; 5 and 6 are not
    probs = np.tile(scores, (len(true_rank), 1))
    labels = np.array(true_rank)  # the class with rank r is class r
    classes = [f"c{i}" for i in range(7)]
    metrics = classification_metrics(labels, probs, classes)
    assert metrics["top5"] == pytest.approx(3 / 5)
    assert metrics["top1"] == pytest.approx(1 / 5)


def test_nll_and_binary_case():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 1])
    metrics = classification_metrics(labels, probs, ["neg", "pos"])
    assert metrics["nll"] == pytest.approx(-(math.log(0.8) + math.log(0.7) + math.log(0.4)) / 3)
    assert metrics["top5"] is None  # two classes: top-5 would be a vacuous 1.0
    assert metrics["top1"] == pytest.approx(2 / 3)
    assert metrics["confusion"] == [[1, 0], [1, 1]]
    assert metrics["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    pos = metrics["per_class"][1]
    assert pos == {"class": "pos", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}


def test_multiclass_with_class_absent_from_test_labels():
    classes = ["a", "b", "c"]
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 2, 1, 1])  # "c" is predicted once but never true
    probs = one_hot_rows(preds, 0.8, 3)
    with pytest.warns(UserWarning):  # sklearn's balanced accuracy notes the class missing from y_true
        metrics = classification_metrics(labels, probs, classes)
    absent = metrics["per_class"][2]
    assert absent == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics["confusion"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    # Macro-F1 averages over all three classes: a: 2/3, b: 1, c: 0.
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert metrics["nll"] == pytest.approx(-math.log(0.8) * 3 / 4 - math.log(0.1) / 4)
    assert metrics["num_classes"] == 3 and metrics["num_test"] == 4
    json.dumps(metrics, allow_nan=False)  # plain Python values only, no NaN


def test_rejects_logits_and_mismatched_classes():
    labels = np.array([0, 1])
    with pytest.raises(ValueError, match="sum to 1"):
        classification_metrics(labels, np.array([[1.5, 1.0], [0.5, 0.5]]), ["a", "b"])
    with pytest.raises(ValueError, match="class names"):
        classification_metrics(labels, np.array([[0.5, 0.5], [0.5, 0.5]]), ["a", "b", "c"])
