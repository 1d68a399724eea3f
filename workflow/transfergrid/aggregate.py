"""Collect the finished cells into one table (``summary.csv``): one row per cell.

The table holds every grid coordinate, what the cell chose on validation, and its test metrics.
The test metrics are carried along for reporting only; nothing downstream may choose by them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .errors import TransferGridError
from .io import read_json, write_csv

# The grid axes, in the order rows are sorted by. ``seed`` is the only axis averaged over in a recipe.
COORDINATES = ("dataset", "fraction", "backbone", "weights", "strategy", "head", "seed")
RECIPE = tuple(axis for axis in COORDINATES if axis != "seed")

SUMMARY_COLUMNS = (
    *COORDINATES,
    "pretrained",
    "freeze_depth",
    "image_size",
    "epochs",
    "epochs_run",
    "best_epoch",
    "val_acc",
    "val_loss",
    "test_top1",
    "test_balanced_accuracy",
    "test_macro_f1",
    "test_top5",
    "test_nll",
    "test_ece",
    "lr",
    "lr_multiplier",
    "lr_at_edge",
    "lr_candidates",
    "C",
    "C_at_edge",
    "inference_images_per_second",
    "trainable_params",
    "frozen_params",
    "wall_seconds",
    "feature_seconds",
    "cost_seconds",
    "fit",
    "num_train",
    "num_test",
    "num_classes",
    "cell_dir",
    "candidate_dir",
)


def freeze_depth(strategy: str) -> str:
    """How much of the base stays frozen, as a facet: `0` (all trains), `k` for freeze:k, `all`
    (frozen) or the name of a multi-phase schedule."""
    base, _, depth = strategy.partition(":")
    return {"full": "0", "scratch": "0", "frozen": "all", "freeze": depth}.get(base, base)


def _read_cell_json(path: Path, keys: tuple[str, ...]) -> dict:
    """A cell's JSON file, checked to hold ``keys``; any problem names the file."""
    if not path.is_file():
        raise TransferGridError(f"missing cell output: {path}")
    try:
        data = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TransferGridError(f"unreadable JSON in {path}: {exc}") from None
    if not isinstance(data, dict):
        raise TransferGridError(f"{path} does not hold a JSON object")
    missing = [key for key in keys if key not in data]
    if missing:
        raise TransferGridError(f"{path} lacks key(s) {', '.join(missing)}")
    return data


def summarise_cell(cell_dir: Path) -> dict:
    """One summary row from a cell's selection and test results and its chosen candidate's
    cell.json and train.json."""
    cell_dir = Path(cell_dir)
    selection = _read_cell_json(cell_dir / "selection.json", ("chosen", "lr_multiplier", "lr", "candidates"))
    candidate_dir = cell_dir / selection["chosen"]
    cell = _read_cell_json(candidate_dir / "cell.json", (*COORDINATES, "image_size", "epochs"))
    train = _read_cell_json(
        candidate_dir / "train.json",
        ("best_epoch", "best_val_acc", "trainable_params", "frozen_params", "wall_seconds", "num_train", "num_classes"),
    )
    test = _read_cell_json(cell_dir / "test.json", ("top1", "balanced_accuracy", "macro_f1", "nll", "ece", "num_test"))
    # A head on cached features also needs the extraction it shares with its siblings: what running
    # this recipe alone costs is the two together.
    feature_seconds = float(train.get("feature_seconds", 0.0))
    return {
        **{axis: str(cell[axis]) for axis in RECIPE if axis != "fraction"},
        "fraction": float(cell["fraction"]),
        "seed": int(cell["seed"]),
        "pretrained": str(cell["weights"]) != "none",
        "freeze_depth": freeze_depth(str(cell["strategy"])),
        "image_size": int(cell["image_size"]),
        "epochs": int(cell["epochs"]),
        "epochs_run": int(train["epochs_run"]),
        "best_epoch": int(train["best_epoch"]),
        "val_acc": float(train["best_val_acc"]),
        "val_loss": float(train["best_val_loss"]),
        "test_top1": float(test["top1"]),
        "test_balanced_accuracy": float(test["balanced_accuracy"]),
        "test_macro_f1": float(test["macro_f1"]),
        "test_top5": float("nan") if test.get("top5") is None else float(test["top5"]),
        "test_nll": float(test["nll"]),
        "test_ece": float(test["ece"]),
        # A closed-form head (logreg) has no learning rate but its own chosen regularisation C.
        "lr": float("nan") if selection["lr"] is None else float(selection["lr"]),
        "lr_multiplier": float(selection["lr_multiplier"]),
        "lr_at_edge": bool(selection.get("at_edge", False)),
        "lr_candidates": len(selection["candidates"]),
        "C": float(train.get("C", float("nan"))),
        "C_at_edge": bool(train.get("C_at_edge", False)),
        "inference_images_per_second": float((test.get("inference") or {}).get("images_per_second") or float("nan")),
        "trainable_params": int(train["trainable_params"]),
        "frozen_params": int(train["frozen_params"]),
        "wall_seconds": float(train["wall_seconds"]),
        "feature_seconds": feature_seconds,
        "cost_seconds": float(train["wall_seconds"]) + feature_seconds,
        "fit": str(train["fit"]),
        "num_train": int(train["num_train"]),
        "num_test": int(test["num_test"]),
        "num_classes": int(train["num_classes"]),
        "cell_dir": str(cell_dir),
        "candidate_dir": str(candidate_dir),
    }


def aggregate_cells(cell_dirs: list[Path], out_csv: Path) -> pd.DataFrame:
    """Summarise every cell into ``out_csv`` (written atomically), sorted by the grid coordinates."""
    if not cell_dirs:
        raise TransferGridError(f"no cells to aggregate into {out_csv}")
    rows = [summarise_cell(Path(cell_dir)) for cell_dir in cell_dirs]
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    duplicated = summary.duplicated(list(COORDINATES), keep=False)
    if duplicated.any():
        first = summary.loc[duplicated, "cell_dir"].iloc[0]
        raise TransferGridError(f"two cell directories hold the same grid cell, one is {first}")
    summary = summary.sort_values(list(COORDINATES), kind="stable", ignore_index=True)
    write_csv(summary, out_csv)
    return summary
