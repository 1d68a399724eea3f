"""Training of one cell, readable top to bottom: data -> model -> epochs -> best epoch on val.

The test split is never loaded here: model selection (best epoch) uses validation only, and the
evaluation rule touches the test split exactly once, after training is finished.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import features
from .augment import AUGMENTATIONS
from .backbones import build_backbone, preprocessing, resolve_backbone
from .heads import HEADS, build_head, head_input_size, make_loss
from .imagecache import load_cache
from .io import atomic_path, read_json, write_csv, write_json
from .model import AUX_LOSS_WEIGHT, TransferModel
from .split import fraction_rows, read_split, split_rows
from .strategies import Phase, Strategy, parse_strategy

Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------------
# Set-up helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_job(threads: int, device: str, seed: int | None = None) -> torch.device:
    """Set-up shared by every compute job: CPU threads, seeds, and the device to run on."""
    torch.set_num_threads(threads)
    if seed is not None:
        seed_everything(seed)
    return resolve_device(device)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is an error, not a silent fallback."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


class TensorBatches:
    """Mini-batches from the uint8 image cache: index, convert, normalise, augment, on the device.

    On a GPU the selected rows are copied to device memory once, so an epoch is pure tensor work.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        rows: np.ndarray,
        batch_size: int,
        device: torch.device,
        mean: tuple,
        std: tuple,
        augment: str = "none",
        seed: int | None = None,
    ):
        rows_tensor = torch.as_tensor(rows, dtype=torch.long)
        self.images = images[rows_tensor].to(device) if device.type == "cuda" else images
        self.labels = labels[rows_tensor].to(device)
        self.rows = torch.arange(len(rows)) if device.type == "cuda" else rows_tensor
        self.batch_size, self.device = batch_size, device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.augment = AUGMENTATIONS[augment]
        self.shuffle = seed is not None
        self.generator = torch.Generator().manual_seed(seed if seed is not None else 0)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = (
            torch.randperm(len(self.rows), generator=self.generator) if self.shuffle else torch.arange(len(self.rows))
        )
        for start in range(0, len(order), self.batch_size):
            positions = order[start : start + self.batch_size]
            images = self.images[self.rows[positions]].to(self.device, non_blocking=True).float().div_(255)
            images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
            images = (images - self.mean) / self.std
            if self.shuffle:
                images = self.augment(images, self.generator)
            yield images, self.labels[positions.to(self.labels.device)]


def build_model(cell: dict, num_classes: int, weights_file: Path | None) -> TransferModel:
    """Backbone (random or from the weights file) plus a freshly initialised head."""
    spec = resolve_backbone(cell["backbone"])
    state = torch.load(weights_file, map_location="cpu", weights_only=True)["state_dict"] if weights_file else None
    # A random base must be a pure function of the cell seed, whatever ran before: the feature
    # cache and the cell rebuild it separately and must get the very same network.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cell.get("seed", 0))
        backbone = build_backbone(spec, state)
    head_spec = HEADS[cell["head"]]
    head = build_head(cell["head"], head_input_size(head_spec, backbone), num_classes, cell.get("head_options"))
    return TransferModel(
        backbone,
        head,
        num_classes,
        spatial_head=head_spec.input == "spatial",
        train_bn=bool(cell.get("train_bn", False)),
    )


def optimizer_groups(model: nn.Module, discriminative_lr: float | None) -> list[dict]:
    if hasattr(model, "optimizer_groups"):
        return model.optimizer_groups(discriminative_lr)
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]


def build_optimizer(model: nn.Module, cell: dict, lr: float) -> torch.optim.Optimizer:
    """A fresh optimizer over the parameters that are trainable right now."""
    settings = cell["optimizer"]
    groups = optimizer_groups(model, cell.get("discriminative_lr"))
    if settings["name"] == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=settings["weight_decay"])
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=settings["momentum"],
        nesterov=settings["nesterov"] and settings["momentum"] > 0,
        weight_decay=settings["weight_decay"],
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def lr_factor(schedule: dict, epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate for a 0-based epoch."""
    if schedule["name"] == "step":
        return schedule["gamma"] ** (epoch // schedule["step_size"])
    if schedule["name"] == "cosine":
        warmup = schedule["warmup_epochs"]
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        progress = (epoch - warmup) / max(1, epochs - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


# ----------------------------------------------------------------------------------------------
# One epoch


def train_one_epoch(
    model: nn.Module, batches: TensorBatches, optimizer: torch.optim.Optimizer, loss_fn: nn.Module
) -> tuple[float, float]:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in batches:
        outputs = model(images)
        logits = outputs[0] if isinstance(outputs, tuple) else outputs
        loss = loss_fn(logits, labels)
        if isinstance(outputs, tuple):  # auxiliary logits count in the training loss only
            loss = loss + AUX_LOSS_WEIGHT * loss_fn(outputs[1], labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return total_loss / seen, correct / seen


@torch.no_grad()
def predict(model: nn.Module, batches: TensorBatches) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every row, in row order."""
    model.eval()
    outputs = [(model(images), labels) for images, labels in batches]
    return torch.cat([o[0] for o in outputs]).float().cpu(), torch.cat([o[1] for o in outputs]).cpu()


def evaluate(model: nn.Module, batches: TensorBatches, loss_fn: nn.Module) -> tuple[float, float]:
    logits, labels = predict(model, batches)
    return loss_fn(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


# ----------------------------------------------------------------------------------------------
# The whole fit


@dataclass
class FitResult:
    history: list[dict]
    best_state: dict
    best_epoch: int
    best_val_acc: float
    best_val_loss: float
    parameter_counts: dict


def _is_better(val_acc: float, val_loss: float, best_acc: float, best_loss: float) -> bool:
    """Higher validation accuracy wins; a tie goes to the lower validation loss."""
    return val_acc > best_acc or (val_acc == best_acc and val_loss < best_loss)


def fit(model: nn.Module, strategy: Strategy, train_batches, val_batches, cell: dict, log: Log = print) -> FitResult:
    """Train for the configured epochs; keep the weights of the best validation epoch.

    ``model`` is a TransferModel or anything with ``apply_phase`` and ``parameter_counts`` (a head
    on cached features); the batches are any iterables of (inputs, labels).
    """
    loss_fn = make_loss(cell["head"], cell["label_smoothing"])
    num_stages = getattr(model, "num_stages", 0)
    base_lr, patience = cell["optimizer"]["lr"], cell.get("early_stopping_patience")
    phase: Phase | None = None
    history, best = [], None
    best_acc, best_loss = -1.0, math.inf
    for epoch in range(cell["epochs"]):
        next_phase = strategy.phase(epoch, num_stages)
        if next_phase != phase:  # a new phase changes what trains, so the optimizer starts afresh
            phase = next_phase
            model.apply_phase(phase)
            optimizer = build_optimizer(model, cell, base_lr)
            log(f"epoch {epoch + 1}: phase {phase.name!r}, {model.parameter_counts()}")
        lr = (phase.lr or base_lr) * lr_factor(cell["schedule"], epoch, cell["epochs"])
        set_learning_rate(optimizer, lr)
        started = time.perf_counter()
        train_loss, train_acc = train_one_epoch(model, train_batches, optimizer, loss_fn)
        val_loss, val_acc = evaluate(model, val_batches, loss_fn)
        row = {
            "epoch": epoch + 1,
            "phase": phase.name,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "seconds": time.perf_counter() - started,
            "trainable_params": model.parameter_counts()["trainable_params"],
            "optimizer_params": sum(p.numel() for g in optimizer.param_groups for p in g["params"]),
        }
        history.append(row)
        log(
            "epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.4f} | val loss {val_loss:.4f} "
            "acc {val_acc:.4f} | lr {lr:.2g} | {seconds:.1f}s".format(**row)
        )
        if _is_better(val_acc, val_loss, best_acc, best_loss):
            best_acc, best_loss = val_acc, val_loss
            best = (epoch + 1, copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()}))
        elif patience and epoch + 1 - best[0] >= patience:
            log(f"early stop: no better validation accuracy for {patience} epochs")
            break
    return FitResult(history, best[1], best[0], best_acc, best_loss, model.parameter_counts())


# ----------------------------------------------------------------------------------------------
# Entry point used by the Snakemake rule


@dataclass
class CellInputs:
    split: Path
    classes: Path
    cache: Path | None = None  # images, for cells that run the backbone
    weights: Path | None = None
    features: Path | None = None  # cached backbone features, for frozen cells without augmentation


def make_batches(cell: dict, images, labels, rows, device, train: bool) -> TensorBatches:
    prep = preprocessing(resolve_backbone(cell["backbone"]), cell["weights"])
    return TensorBatches(
        images,
        labels,
        rows,
        cell["batch_size"],
        device,
        prep.mean,
        prep.std,
        augment=cell["augment"] if train else "none",
        seed=cell["seed"] if train else None,
    )


def fit_through_network(model, strategy, inputs: CellInputs, cell, rows, device, log) -> FitResult:
    images, labels = load_cache(inputs.cache)
    return fit(
        model,
        strategy,
        make_batches(cell, images, labels, rows["train"], device, True),
        make_batches(cell, images, labels, rows["val"], device, False),
        cell,
        log,
    )


def fit_on_features(model, strategy, inputs: CellInputs, cell, rows, device, log) -> FitResult:
    """Train the head alone on cached features: the same experiment as through the frozen network
    (same batches, same initialisation), without running the backbone every epoch."""
    payload = features.load_features(inputs.features)
    result = fit(
        features.head_only_model(model),
        strategy,
        features.feature_batches(cell, payload, rows["train"], device, True),
        features.feature_batches(cell, payload, rows["val"], device, False),
        cell,
        log,
    )
    result.best_state = features.head_state_into_model(model, result.best_state).state_dict()
    check_features_match_network(model, payload, inputs, cell, rows["val"], device)
    return result


FEATURE_MATCH_TOLERANCE = 0.02  # relative logit error; TF32 convolutions on GPUs stay well below


def check_features_match_network(model, payload, inputs: CellInputs, cell, rows, device, count: int = 16) -> None:
    """The saved model (backbone + head) must give the logits the head gave on cached features:
    a mismatch would make validation and test measure different networks. Another network gives a
    relative error near 1; batch composition and TF32 kernels on a GPU give about 1e-3."""
    images, labels = load_cache(inputs.cache)
    sample = rows[:count]
    through_network, _ = predict(model, make_batches(cell, images, labels, sample, device, train=False))
    on_features, _ = predict(model.head, features.feature_batches(cell, payload, sample, device, False))
    error = ((through_network - on_features).norm() / on_features.norm().clamp_min(1e-12)).item()
    if error > FEATURE_MATCH_TOLERANCE:
        raise RuntimeError(
            f"cached features of {inputs.features} do not match the cell's backbone (relative logit error {error:.3g})"
        )


def fit_closed_form(model, strategy, inputs: CellInputs, cell, rows, device, log) -> FitResult:
    """Heads fit by scikit-learn on cached features (logreg), regularisation chosen on val."""
    payload = features.load_features(inputs.features)
    linear, chosen_c, val_accuracy = features.fit_logreg_on_features(
        payload, rows["train"], rows["val"], model.head.out_features, cell.get("head_options"), cell["seed"]
    )
    model.head.load_state_dict(linear.state_dict())
    head_model = features.head_only_model(model)
    head_model.apply_phase(strategy.phase(0, model.num_stages))
    loss_fn = make_loss(cell["head"], 0.0)
    train_loss, train_acc = evaluate(
        head_model, features.feature_batches(cell, payload, rows["train"], device, False), loss_fn
    )
    val_loss, val_acc = evaluate(
        head_model, features.feature_batches(cell, payload, rows["val"], device, False), loss_fn
    )
    log(f"logreg: C={chosen_c} chosen on val; val accuracy per C: {val_accuracy}")
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


def choose_fitter(cell: dict, inputs: CellInputs):
    if HEADS[cell["head"]].fit == "sklearn":
        return fit_closed_form
    return fit_on_features if inputs.features else fit_through_network


def train_cell(cell: dict, inputs: CellInputs, out_dir: Path, threads: int = 1, log: Log = print) -> dict:
    """Train one cell and write model.pt, history.csv, train.json and cell.json into ``out_dir``."""
    device = prepare_job(threads, cell["device"], cell["seed"])
    split = read_split(inputs.split)
    classes = read_json(inputs.classes)["classes"]
    rows = {"train": fraction_rows(split, cell["fraction"]), "val": split_rows(split, "val")}
    fitter = choose_fitter(cell, inputs)
    log(f"cell {cell}; device {device}; {len(rows['train'])} train / {len(rows['val'])} val images; {fitter.__name__}")

    model = build_model(cell, len(classes), inputs.weights).to(device)
    strategy = parse_strategy(cell["strategy"], cell.get("strategy_options"))
    started = time.perf_counter()
    result = fitter(model, strategy, inputs, cell, rows, device, log)
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
    write_outputs(out_dir, cell, classes, result, summary)
    return summary


def write_outputs(out_dir: Path, cell: dict, classes: list, result: FitResult, summary: dict) -> None:
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save({"state_dict": result.best_state, "cell": cell, "classes": classes}, tmp)
    write_csv(pd.DataFrame(result.history), out_dir / "history.csv")
    write_json(out_dir / "train.json", summary)
    write_json(out_dir / "cell.json", cell)
