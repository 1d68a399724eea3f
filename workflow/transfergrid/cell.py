"""Training one learning-rate candidate of a cell through the network, and the files every
candidate leaves in its directory (``record_candidate``), whichever way it was fitted.

A candidate directory holds ``model.pt``, ``history.csv``, ``train.json`` and ``cell.json``. A
candidate whose training diverged is recorded as such (``train.json`` status ``diverged``, with the
epoch and the loss; ``model.pt`` holds no weights): the cell's selection skips it, and a cell whose
every candidate diverged fails at selection with one line, never showing a number.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .batches import make_batches
from .checkpoint import Checkpoint
from .errors import DivergedError, TransferGridError
from .imagecache import load_cache
from .io import atomic_path, read_json, write_json
from .loop import FitResult, Log, fit
from .model import build_model
from .runtime import peak_memory_mb, prepare_job, prepare_model, reset_peak_memory, resolve_precision
from .settings import CellSettings, write_settings
from .split import fraction_rows, read_split, split_rows
from .strategies import parse_strategy

HISTORY_COLUMNS = (
    "epoch",
    "phase",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
    "train_seconds",
    "trainable_params",
    "optimizer_params",
)


@dataclass
class CellInputs:
    split: Path
    classes: Path
    cache: Path  # the uint8 image cache
    weights: Path | None = None  # starting weights; None for a random base


@dataclass
class CandidateResult:
    out_dir: Path
    summary: dict  # what train.json holds


def train_candidate(
    settings: CellSettings,
    inputs: CellInputs,
    out_dir: Path,
    threads: int = 1,
    log: Log = print,
    checkpoint_path: Path | None = None,
    code_version: str = "",
) -> CandidateResult:
    """Train one candidate through the network and write its directory. With a checkpoint path,
    the fit is saved every epoch, resumed when the job runs again with the same settings and code
    version, and removed at the end."""
    device = prepare_job(threads, settings.device, settings.seed, settings.cudnn_benchmark)
    reset_peak_memory(device)
    split = read_split(inputs.split)
    classes = read_json(inputs.classes)["classes"]
    rows = {"train": fraction_rows(split, settings.fraction), "val": split_rows(split, "val")}
    precision = resolve_precision(settings.precision, device)
    log(
        f"cell {settings.to_dict()}; device {device}, precision {precision}; "
        f"{len(rows['train'])} train / {len(rows['val'])} val images"
    )

    model = build_model(settings, len(classes), inputs.weights).to(device)
    prepare_model(model, precision, device)
    if settings.compile:
        # The forward alone: the module and its state-dict keys stay as they are.
        model.forward = torch.compile(model.forward)
    strategy = parse_strategy(settings.strategy, settings.strategy_options)
    images, labels = load_cache(inputs.cache)
    checkpoint = Checkpoint(Path(checkpoint_path), settings.to_dict(), code_version) if checkpoint_path else None
    started = time.perf_counter()
    train_batches = make_batches(settings, images, labels, rows["train"], device, True)
    try:
        result = fit(
            model,
            strategy,
            train_batches,
            make_batches(settings, images, labels, rows["val"], device, False),
            settings,
            log,
            checkpoint,
            statistics_batches=train_batches.in_row_order(),
        )
    except DivergedError as diverged:
        result = diverged
    info = {
        "fit": "through_network",
        "precision": getattr(result, "precision", None),
        "num_train": len(rows["train"]),
        "num_val": len(rows["val"]),
        "num_classes": len(classes),
        "wall_seconds": time.perf_counter() - started,
        "device": str(device),
        "peak_gpu_memory_mb": peak_memory_mb(device),
    }
    recorded = record_candidate(out_dir, settings, classes, result, info, head_only=False, log=log)
    if checkpoint is not None:
        checkpoint.remove()
    return recorded


def check_finite_state(state: dict) -> None:
    """A model with non-finite weights is never saved as a result."""
    bad = [key for key, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise TransferGridError(
            f"the best model has non-finite weights in {len(bad)} tensor(s), e.g. {bad[:3]}; lower train.optimizer.lr"
        )


def record_candidate(
    out_dir: Path,
    settings: CellSettings,
    classes: list,
    result: FitResult | DivergedError,
    info: dict,
    head_only: bool,
    weights_file: str | None = None,
    log: Log = print,
) -> CandidateResult:
    """Write a candidate's model.pt, history.csv, train.json and cell.json (a diverged candidate's
    too: its model holds no weights and its train.json says where it diverged)."""
    out_dir = Path(out_dir)
    model = {"cell": settings.to_dict(), "classes": classes, "head_only": head_only, "weights_file": weights_file}
    if isinstance(result, DivergedError):
        log(f"diverged: {result}")
        summary = {
            "status": "diverged",
            "diverged_epoch": result.epoch,
            "diverged_loss": result.loss,
            "reason": str(result),
            "epochs_run": result.epoch,
            **info,
        }
        model["state_dict"], history = None, []
    else:
        check_finite_state(result.best_state)
        summary = {
            "status": "trained",
            "best_epoch": result.best_epoch,
            "best_val_acc": result.best_val_acc,
            "best_val_loss": result.best_val_loss,
            "epochs_run": len(result.history),
            **result.parameter_counts,
            **info,
        }
        model["state_dict"], history = result.best_state, result.history
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save(model, tmp)
    write_history(history, out_dir / "history.csv")
    write_json(out_dir / "train.json", summary)
    write_settings(out_dir / "cell.json", settings)
    return CandidateResult(out_dir, summary)


def write_history(rows: list[dict], path: Path) -> None:
    """The epoch table, one row per epoch (the csv module: no pandas in training jobs)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
