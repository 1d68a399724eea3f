"""Test-set evaluation of a cell, after its learning-rate candidate is chosen on validation.

The test split is touched once per cell, for the chosen candidate only, and nothing downstream
chooses by it. Network cells run their chosen model on the test images; frozen cells on cached
features run their head on the cached test features (the same numbers, without the backbone).
Editing this module (or ``metrics``) re-evaluates every cell and retrains none.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .batches import feature_batches, make_batches
from .errors import TransferGridError
from .features import head_state_into_model, load_features
from .folding import example_input
from .frozen import head_model
from .heads import fitted_by_gradient_descent
from .imagecache import load_cache
from .io import atomic_path, read_json, write_json
from .loop import predict
from .metrics import classification_metrics
from .model import build_model
from .runtime import prepare_inference_model, prepare_job, prepare_process, resolve_device, resolve_precision
from .settings import CellSettings
from .split import read_split, split_rows

# ----------------------------------------------------------------------------------------------
# Choosing the candidate, on validation only


def choose_candidate(candidate_dirs: list[Path]) -> tuple[Path, dict]:
    """The candidate with the best validation accuracy (ties: lower validation loss, then the
    smaller learning rate), and the selection record: every candidate's validation numbers. A head
    fitted in closed form (logreg) has no learning rate: its ``lr`` is None, never the recipe's
    configured rate, which it did not use."""
    rows = []
    for directory in map(Path, candidate_dirs):
        summary = read_json(directory / "train.json")
        settings = read_json(directory / "cell.json")
        rows.append(
            {
                "candidate": directory.name,
                "lr_multiplier": settings["lr_multiplier"],
                "lr": settings["optimizer"]["lr"] if fitted_by_gradient_descent(settings["head"]) else None,
                "status": summary["status"],
                "val_acc": summary.get("best_val_acc"),
                "val_loss": summary.get("best_val_loss"),
                "best_epoch": summary.get("best_epoch"),
                "reason": summary.get("reason"),
            }
        )
    trained = [row for row in rows if row["status"] == "trained"]
    if not trained:
        reasons = "; ".join(f"{row['candidate']}: {row['reason']}" for row in rows)
        raise TransferGridError(
            f"cell {Path(candidate_dirs[0]).parent}: every learning-rate candidate diverged ({reasons})"
        )
    best = min(trained, key=lambda row: (-row["val_acc"], row["val_loss"], row["lr_multiplier"]))
    multipliers = sorted(row["lr_multiplier"] for row in rows)
    selection = {
        "chosen": best["candidate"],
        "lr_multiplier": best["lr_multiplier"],
        "lr": best["lr"],
        # The search should widen when the best rate is the smallest or largest one tried.
        "at_edge": len(multipliers) > 1 and best["lr_multiplier"] in (multipliers[0], multipliers[-1]),
        "candidates": rows,
    }
    return Path(candidate_dirs[0]).parent / best["candidate"], selection


# ----------------------------------------------------------------------------------------------
# Trained models


def load_trained_network(model_file: Path, weights_file: Path | None = None):
    """A candidate's trained network on the CPU, exactly as it was saved, with its settings and
    class names. A head-only model (frozen cells on cached features) gets its frozen base rebuilt
    from its starting weights."""
    checkpoint = torch.load(model_file, map_location="cpu", weights_only=True)
    if checkpoint.get("state_dict") is None:
        raise TransferGridError(f"{model_file} holds no trained model (its training diverged)")
    settings, classes = CellSettings.from_dict(checkpoint["cell"]), checkpoint["classes"]
    if checkpoint["head_only"]:
        base_weights = weights_file or checkpoint["weights_file"]
        model = build_model(settings, len(classes), Path(base_weights) if base_weights else None)
        head_state_into_model(model, checkpoint["state_dict"])
    else:
        model = build_model(settings, len(classes), weights_file=None)
        model.load_state_dict(checkpoint["state_dict"])
    return model, settings, classes


def load_trained_model(model_file: Path, weights_file: Path | None = None, log=print):
    """``load_trained_network`` made ready for inference (test evaluation, predict): batch norms
    folded into their convolutions, on its device, prepared for its precision."""
    model, settings, classes = load_trained_network(model_file, weights_file)
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    example = example_input(settings.image_size)
    model = prepare_inference_model(model, lambda net, x: net(x), example, precision, device, log)
    return model, settings, classes


# ----------------------------------------------------------------------------------------------
# Writing the test results


@dataclass
class TestRun:
    rows: np.ndarray  # manifest rows of the test split
    labels: np.ndarray
    logits: torch.Tensor
    seconds: float  # inference time of the whole test split
    device: str


def write_test_outputs(out_dir: Path, run: TestRun, classes: list[str], selection: dict, log) -> dict:
    """test.json (metrics, selection, throughput), predictions.csv and confusion.csv."""
    out_dir = Path(out_dir)
    probs = run.logits.double().softmax(1).numpy()
    metrics = classification_metrics(run.labels, probs, classes)
    metrics["inference"] = {
        "images": len(run.rows),
        "seconds": run.seconds,
        "images_per_second": len(run.rows) / run.seconds if run.seconds > 0 else None,
        "device": run.device,
    }
    metrics["selection"] = selection
    log(
        f"test on {len(run.rows)} images ({selection['chosen']}): top1 {metrics['top1']:.4f}, "
        f"macro-F1 {metrics['macro_f1']:.4f}, NLL {metrics['nll']:.4f}, ECE {metrics['ece']:.4f}"
    )
    preds = probs.argmax(1)
    with atomic_path(out_dir / "predictions.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["index", "label", "pred", *(f"p_{c}" for c in classes)])
        for row, label, pred, p in zip(run.rows, run.labels, preds, probs):
            writer.writerow([int(row), int(label), int(pred), *(f"{v:.6g}" for v in p)])
    with atomic_path(out_dir / "confusion.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["true", *classes])
        for name, counts in zip(classes, metrics["confusion"]):
            writer.writerow([name, *counts])
    write_json(out_dir / "selection.json", selection)
    write_json(out_dir / "test.json", metrics)
    return metrics


def _timed_predict(model, batches, device, precision="fp32") -> tuple[torch.Tensor, torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    logits, labels = predict(model, batches, precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return logits, labels, time.perf_counter() - started


# ----------------------------------------------------------------------------------------------
# The two kinds of cell


def evaluate_network_cells(
    cells: list[tuple[Path, list[Path]]], cache: Path, split_csv: Path, threads: int = 1, log=print
) -> list[dict]:
    """For every (cell dir, candidate dirs), e.g. the seeds of one recipe: choose the candidate on
    val, run its network on the test images, write the test outputs. The image cache and the test
    rows are opened once for all of them."""
    prepare_process(threads)
    images, labels = load_cache(cache)
    rows = split_rows(read_split(split_csv), "test")
    results = []
    for out_dir, candidate_dirs in cells:
        chosen, selection = choose_candidate(candidate_dirs)
        model, settings, classes = load_trained_model(chosen / "model.pt", log=log)
        device = next(model.parameters()).device
        logits, targets, seconds = _timed_predict(
            model, make_batches(settings, images, labels, rows, device, False), device
        )
        run = TestRun(rows, targets.numpy(), logits, seconds, str(device))
        results.append(write_test_outputs(out_dir, run, classes, selection, log))
    return results


def evaluate_network_cell(
    candidate_dirs: list[Path], cache: Path, split_csv: Path, out_dir: Path, threads: int = 1, log=print
) -> dict:
    """``evaluate_network_cells`` for one cell."""
    cells = [(Path(out_dir), [Path(path) for path in candidate_dirs])]
    (metrics,) = evaluate_network_cells(cells, cache, split_csv, threads, log)
    return metrics


def evaluate_frozen_group(
    cells: list[tuple[Path, list[Path]]], features_path: Path, split_csv: Path, threads: int = 1, log=print
) -> None:
    """For every (cell dir, candidate dirs) of one feature cache: choose on val, run the chosen
    head on the cached test features, write the test outputs."""
    payload = load_features(features_path)
    rows = split_rows(read_split(split_csv), "test")
    for cell_dir, candidate_dirs in cells:
        chosen, selection = choose_candidate(candidate_dirs)
        checkpoint = torch.load(chosen / "model.pt", map_location="cpu", weights_only=True)
        settings, classes = CellSettings.from_dict(checkpoint["cell"]), checkpoint["classes"]
        device = prepare_job(threads, settings.device)
        head = head_model(settings, payload, len(classes))
        head.load_state_dict(checkpoint["state_dict"])
        head.to(device)
        logits, targets, seconds = _timed_predict(head, feature_batches(settings, payload, rows, device, False), device)
        run = TestRun(rows, targets.numpy(), logits, seconds, f"{device} (head on cached features)")
        write_test_outputs(cell_dir, run, classes, selection, log)
