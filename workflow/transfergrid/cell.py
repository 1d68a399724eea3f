"""Training one cell: its data, its model, the fitter its recipe needs, and its output files.

Three fitters share one signature: through the network (the general case), on cached features (a
frozen base without augmentation: the same experiment without running the backbone every epoch),
and in closed form (scikit-learn heads on cached features).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import features
from .batches import feature_batches, make_batches
from .errors import TransferGridError
from .heads import HEADS, make_loss
from .imagecache import load_cache
from .io import atomic_path, read_json, write_csv, write_json
from .logreg import fit_logreg_on_features
from .loop import FitResult, Log, evaluate, fit, predict
from .model import build_model
from .runtime import prepare_job
from .settings import CellSettings, write_settings
from .split import fraction_rows, read_split, split_rows
from .strategies import Strategy, parse_strategy


@dataclass
class CellInputs:
    split: Path
    classes: Path
    cache: Path | None = None  # images, for cells that run the backbone
    weights: Path | None = None
    features: Path | None = None  # cached backbone features, for frozen cells without augmentation


@dataclass
class CellData:
    """What every fitter works on: the cell's settings, files, rows and device."""

    settings: CellSettings
    inputs: CellInputs
    rows: dict[str, np.ndarray]  # "train" (the cell's fraction) and "val" manifest rows
    num_classes: int
    device: torch.device
    log: Log


def fit_through_network(model: nn.Module, strategy: Strategy, data: CellData) -> FitResult:
    images, labels = load_cache(data.inputs.cache)
    settings, device = data.settings, data.device
    return fit(
        model,
        strategy,
        make_batches(settings, images, labels, data.rows["train"], device, True),
        make_batches(settings, images, labels, data.rows["val"], device, False),
        settings,
        data.log,
    )


def fit_on_features(model: nn.Module, strategy: Strategy, data: CellData) -> FitResult:
    """Train the head alone on cached features: the same experiment as through the frozen network
    (same batches, same initialisation), without running the backbone every epoch."""
    payload = features.load_features(data.inputs.features)
    settings, device = data.settings, data.device
    result = fit(
        features.head_only_model(model),
        strategy,
        feature_batches(settings, payload, data.rows["train"], device, True),
        feature_batches(settings, payload, data.rows["val"], device, False),
        settings,
        data.log,
    )
    result.best_state = features.head_state_into_model(model, result.best_state).state_dict()
    check_features_match_network(model, payload, data)
    return result


FEATURE_MATCH_TOLERANCE = 0.02  # relative logit error; TF32 convolutions on GPUs stay well below


def check_features_match_network(model: nn.Module, payload: dict, data: CellData, count: int = 16) -> None:
    """The saved model (backbone + head) must give the logits the head gave on cached features:
    a mismatch would make validation and test measure different networks. Another network gives a
    relative error near 1; batch composition and TF32 kernels on a GPU give about 1e-3."""
    images, labels = load_cache(data.inputs.cache)
    sample = data.rows["val"][:count]
    through_network, _ = predict(model, make_batches(data.settings, images, labels, sample, data.device, False))
    on_features, _ = predict(model.head, feature_batches(data.settings, payload, sample, data.device, False))
    error = ((through_network - on_features).norm() / on_features.norm().clamp_min(1e-12)).item()
    if error > FEATURE_MATCH_TOLERANCE:
        raise RuntimeError(
            f"cached features of {data.inputs.features} do not match the cell's backbone "
            f"(relative logit error {error:.3g})"
        )


def fit_closed_form(model: nn.Module, strategy: Strategy, data: CellData) -> FitResult:
    """Heads fit by scikit-learn on cached features (logreg), regularisation chosen on val."""
    settings, device = data.settings, data.device
    payload = features.load_features(data.inputs.features)
    linear, chosen_c, val_accuracy = fit_logreg_on_features(
        payload, data.rows["train"], data.rows["val"], model.head.out_features, settings.head_options, settings.seed
    )
    model.head.load_state_dict(linear.state_dict())
    head_model = features.head_only_model(model)
    head_model.apply_phase(strategy.phase(0, model.num_stages))
    loss_fn = make_loss(settings.head, 0.0)
    train_loss, train_acc = evaluate(
        head_model, feature_batches(settings, payload, data.rows["train"], device, False), loss_fn
    )
    val_loss, val_acc = evaluate(
        head_model, feature_batches(settings, payload, data.rows["val"], device, False), loss_fn
    )
    data.log(f"logreg: C={chosen_c} chosen on val; val accuracy per C: {val_accuracy}")
    history = [
        {
            "epoch": 1,
            "phase": f"logreg C={chosen_c}",
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": 0.0,
            "seconds": 0.0,
            "trainable_params": head_model.parameter_counts()["trainable_params"],
            "optimizer_params": 0,
        }
    ]
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return FitResult(history, state, 1, val_acc, val_loss, head_model.parameter_counts())


def choose_fitter(settings: CellSettings, inputs: CellInputs):
    if HEADS[settings.head].fit == "sklearn":
        return fit_closed_form
    return fit_on_features if inputs.features else fit_through_network


def train_cell(settings: CellSettings, inputs: CellInputs, out_dir: Path, threads: int = 1, log: Log = print) -> dict:
    """Train one cell and write model.pt, history.csv, train.json and cell.json into ``out_dir``."""
    device = prepare_job(threads, settings.device, settings.seed)
    split = read_split(inputs.split)
    classes = read_json(inputs.classes)["classes"]
    rows = {"train": fraction_rows(split, settings.fraction), "val": split_rows(split, "val")}
    fitter = choose_fitter(settings, inputs)
    log(
        f"cell {settings.to_dict()}; device {device}; {len(rows['train'])} train / {len(rows['val'])} val images; "
        f"{fitter.__name__}"
    )

    model = build_model(settings, len(classes), inputs.weights).to(device)
    strategy = parse_strategy(settings.strategy, settings.strategy_options)
    started = time.perf_counter()
    result = fitter(model, strategy, CellData(settings, inputs, rows, len(classes), device, log))
    wall = time.perf_counter() - started

    summary = {
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val_acc,
        "best_val_loss": result.best_val_loss,
        "epochs_run": len(result.history),
        **result.parameter_counts,
        "wall_seconds": wall,
        "device": str(device),
        "fit": fitter.__name__,
        "num_train": len(rows["train"]),
        "num_val": len(rows["val"]),
        "num_classes": len(classes),
    }
    write_outputs(out_dir, settings, classes, result, summary)
    return summary


def check_finite_state(state: dict) -> None:
    """A model with non-finite weights is never saved as a result."""
    bad = [key for key, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise TransferGridError(
            f"the best model has non-finite weights in {len(bad)} tensor(s), e.g. {bad[:3]}; lower train.optimizer.lr"
        )


def write_outputs(out_dir: Path, settings: CellSettings, classes: list, result: FitResult, summary: dict) -> None:
    out_dir = Path(out_dir)
    check_finite_state(result.best_state)
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save({"state_dict": result.best_state, "cell": settings.to_dict(), "classes": classes}, tmp)
    write_csv_rows(result.history, out_dir / "history.csv")
    write_json(out_dir / "train.json", summary)
    write_settings(out_dir / "cell.json", settings)


def write_csv_rows(rows: list[dict], path: Path) -> None:
    import pandas as pd

    write_csv(pd.DataFrame(rows), path)
