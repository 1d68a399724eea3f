"""Test-set evaluation of a trained cell: run once, after training, never used for any choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from .batches import make_batches
from .imagecache import load_cache
from .io import write_csv, write_json
from .loop import predict
from .model import build_model
from .runtime import resolve_device
from .settings import CellSettings
from .split import read_split, split_rows


def load_trained_model(model_file: Path):
    """The cell's best model on the cell's device, with the cell config and class names."""
    checkpoint = torch.load(model_file, map_location="cpu", weights_only=True)
    settings, classes = CellSettings.from_dict(checkpoint["cell"]), checkpoint["classes"]
    model = build_model(settings, len(classes), weights_file=None)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(resolve_device(settings.device)), settings, classes


def test_metrics(labels: np.ndarray, preds: np.ndarray, classes: list[str]) -> dict:
    return {
        "top1": float(accuracy_score(labels, preds)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", labels=range(len(classes)), zero_division=0)),
        "num_test": len(labels),
        "classes": classes,
    }


def evaluate_cell(model_file: Path, cache: Path, split_csv: Path, out_dir: Path, threads: int = 1, log=print) -> dict:
    """Write test.json, predictions.csv and confusion.csv next to the model."""
    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    model, settings, classes = load_trained_model(model_file)
    device = next(model.parameters()).device
    images, labels = load_cache(cache)
    rows = split_rows(read_split(split_csv), "test")
    logits, targets = predict(model, make_batches(settings, images, labels, rows, device, train=False))
    probs = logits.softmax(1).numpy()
    preds, targets = probs.argmax(1), targets.numpy()
    metrics = test_metrics(targets, preds, classes)
    log(
        f"test on {len(rows)} images: top1 {metrics['top1']:.4f}, balanced {metrics['balanced_accuracy']:.4f}, "
        f"macro-F1 {metrics['macro_f1']:.4f}"
    )
    predictions = pd.DataFrame({"index": rows, "label": targets, "pred": preds})
    predictions = pd.concat([predictions, pd.DataFrame(probs, columns=[f"p_{c}" for c in classes])], axis=1)
    confusion = pd.DataFrame(confusion_matrix(targets, preds, labels=range(len(classes))), columns=classes)
    confusion.insert(0, "true", classes)
    write_csv(predictions, out_dir / "predictions.csv")
    write_csv(confusion, out_dir / "confusion.csv")
    write_json(out_dir / "test.json", metrics)
    return metrics
