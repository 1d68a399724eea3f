"""``transfergrid predict``: a trained cell on new image files, with the preprocessing it was trained with.

Every image is decoded as the image cache decodes it (``imagecache.load_image``: wide samples
scaled to 8 bits, the dataset's L or RGB mode, the shorter side resized to the cell's image size,
the centre cropped), normalised by the very batches evaluation uses (``batches.make_batches`` over
the decoded uint8 rows: /255, grayscale expanded to 3 channels, the backbone's mean and std), and
run through the cell's model (``evaluate.load_trained_model``; the base of a head-only frozen
cell is rebuilt from the weights file its model.pt records, relative to the project directory)
in float32, as the test evaluation runs it.

Without a cell, the dataset's cell with the best validation accuracy in results/summary.csv is
used (ties: the first row); test metrics never choose. Paths are relative to the project
directory (where Snakemake runs).
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .batches import make_batches
from .errors import DataError, TransferGridError, one_line
from .evaluate import load_trained_model
from .imagecache import load_image
from .io import atomic_path, read_json
from .loop import predict
from .settings import CellSettings
from .sources.common import IMAGE_EXTENSIONS, images_under

DATASETS_DIR = Path("results/datasets")
SUMMARY_CSV = Path("results/summary.csv")
# Images decoded and held at a time (a whole number of batches, so the batches are those that
# evaluating the same rows from the image cache would make).
CHUNK_IMAGES = 1024
FIXED_COLUMNS = ("path", "predicted", "probability")


@dataclass(frozen=True)
class TrainedCell:
    """The candidate a prediction runs, as its model.pt describes it."""

    candidate_dir: Path
    settings: CellSettings
    classes: list[str]
    head_only: bool
    weights_file: Path | None  # the frozen base's starting weights of a head-only model, resolved

    @property
    def model_file(self) -> Path:
        return self.candidate_dir / "model.pt"


@dataclass
class Predictions:
    paths: list[Path]
    classes: list[str]
    probabilities: np.ndarray  # float64 [images, classes], softmax of the float32 logits
    cell: TrainedCell

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(1)


# ----------------------------------------------------------------------------------------------
# The dataset and the cell


def known_datasets(project: Path = Path()) -> list[str]:
    """Datasets the workflow has obtained in ``project``: those with a classes.json."""
    return sorted(path.parent.name for path in (project / DATASETS_DIR).glob("*/classes.json"))


def dataset_info(dataset: str, project: Path = Path()) -> dict:
    """The dataset's classes.json (classes in label order, channels)."""
    path = project / DATASETS_DIR / dataset / "classes.json"
    if not path.is_file():
        known = ", ".join(known_datasets(project)) or "none (run the workflow in this project directory first)"
        raise DataError(f"unknown dataset {dataset!r}: there is no {path}; known datasets: {known}")
    try:
        info = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"unreadable JSON in {path}: {one_line(error)}") from None
    if not isinstance(info, dict) or not {"classes", "channels"} <= set(info):
        raise DataError(f"{path} lacks its classes or channels: rerun the workflow's obtain_dataset rule")
    return info


def resolve_candidate(path: Path) -> Path:
    """The candidate directory that ``path`` designates: itself when it holds a model.pt, else, for
    a cell directory, the candidate its selection.json chose on validation."""
    path = Path(path)
    if not path.is_dir():
        raise TransferGridError(f"cell {path} does not exist or is not a directory")
    if (path / "model.pt").is_file():
        return path
    selection = path / "selection.json"
    if selection.is_file():
        try:
            chosen = read_json(selection)["chosen"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise TransferGridError(f"{selection} names no chosen candidate: {one_line(error)}") from None
        candidate = path / str(chosen)
        if not (candidate / "model.pt").is_file():
            raise TransferGridError(f"cell {path} chose candidate {chosen!r}, but {candidate} holds no model.pt")
        return candidate
    candidates = sorted(p.parent for p in path.glob("*/model.pt"))
    if candidates:
        raise TransferGridError(
            f"cell {path} has no selection.json: its candidates are not evaluated yet (run the workflow), "
            f"or name one candidate directory such as {candidates[0]}"
        )
    raise TransferGridError(
        f"{path} holds no trained model: neither a model.pt (a candidate directory) nor a selection.json "
        "(a cell directory)"
    )


def best_cell(dataset: str, project: Path = Path()) -> Path:
    """The cell directory of ``dataset`` with the best validation accuracy in results/summary.csv;
    ties go to the first row (the summary is sorted by the grid coordinates)."""
    path = project / SUMMARY_CSV
    if not path.is_file():
        raise TransferGridError(f"there is no {path}: run the workflow first, or name a cell with --cell")
    try:
        summary = pd.read_csv(path, dtype={"dataset": str, "cell_dir": str}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise TransferGridError(f"unreadable {path}: {one_line(error)}") from None
    missing = [column for column in ("dataset", "val_acc", "cell_dir") if column not in summary]
    if missing:
        raise TransferGridError(f"{path} lacks column(s) {', '.join(missing)}: rerun the workflow's aggregate rule")
    val_acc = pd.to_numeric(summary["val_acc"], errors="coerce")
    rows = summary[(summary["dataset"] == dataset) & val_acc.notna()]
    if rows.empty:
        present = ", ".join(sorted(set(summary["dataset"].dropna()))) or "none"
        raise TransferGridError(
            f"{path} holds no cell of dataset {dataset!r} (its datasets: {present}); "
            "run the workflow for it, or name a cell with --cell"
        )
    best = rows.iloc[int(np.argmax(val_acc[rows.index].to_numpy()))]  # argmax: the first of equals
    return project / best["cell_dir"]


def _load_header(model_file: Path) -> dict:
    """model.pt's settings, classes and kind, memory-mapped: its tensors are not read."""
    try:
        checkpoint = torch.load(model_file, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        raise TransferGridError(f"{model_file} is not a readable model file: {one_line(error)}") from None
    keys = ("cell", "classes", "head_only", "state_dict")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in keys):
        raise TransferGridError(f"{model_file} is not a transfergrid model file (it lacks {', '.join(keys)})")
    return checkpoint


def _diverged_reason(candidate_dir: Path) -> str:
    try:
        return f" ({read_json(candidate_dir / 'train.json')['reason']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def load_cell(candidate_dir: Path, project: Path = Path()):
    """The model of a candidate directory on its device, and what it is (a TrainedCell)."""
    model_file = candidate_dir / "model.pt"
    checkpoint = _load_header(model_file)
    if checkpoint["state_dict"] is None:
        raise TransferGridError(
            f"{model_file} holds no trained model: its training diverged{_diverged_reason(candidate_dir)}"
        )
    try:
        settings = CellSettings.from_dict(checkpoint["cell"])
    except (ValueError, TypeError) as error:
        raise TransferGridError(f"{model_file} holds settings of another version: {one_line(error)}") from None
    weights_file = None
    if checkpoint["head_only"] and checkpoint.get("weights_file"):
        weights_file = project / checkpoint["weights_file"]  # an absolute path stays as it is
        if not weights_file.is_file():
            raise TransferGridError(
                f"{model_file} is a head on a frozen base whose weights {weights_file} are missing "
                "(run from the project directory that trained it)"
            )
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise TransferGridError(f"{model_file} was trained with train.device 'cuda' and no CUDA device is visible")
    cell = TrainedCell(
        candidate_dir, settings, list(checkpoint["classes"]), bool(checkpoint["head_only"]), weights_file
    )
    del checkpoint
    # Notes go to standard error: standard output may carry the predictions' CSV.
    model, _, _ = load_trained_model(model_file, weights_file, log=lambda line: print(line, file=sys.stderr))
    return model, cell


# ----------------------------------------------------------------------------------------------
# The images


def find_images(inputs: list[Path]) -> list[Path]:
    """The files given and every image file under the folders given (recursively, sorted, hidden
    ones left out), each once, in that order."""
    found: dict[Path, Path] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            paths = images_under(item)
        elif item.is_file():
            paths = [item]
        else:
            raise DataError(f"no such image file or folder: {item}")
        for path in paths:
            found.setdefault(path.resolve(), path)
    if not found:
        named = ", ".join(map(str, inputs))
        raise DataError(f"no images found in {named} (image files end in {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return list(found.values())


def _decoded(path: Path, size: int, mode: str) -> np.ndarray:
    try:
        return load_image(path, size, mode)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"unreadable image {path}: {one_line(error) or type(error).__name__}") from None


def decode_images(paths: list[Path], size: int, mode: str, threads: int | None = None) -> torch.Tensor:
    """The images as the image cache holds them: uint8 ``[N, C, size, size]``."""
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL releases the GIL while decoding
        arrays = list(pool.map(lambda path: _decoded(path, size, mode), paths))
    return torch.from_numpy(np.stack(arrays))


# ----------------------------------------------------------------------------------------------
# Predicting


def class_probabilities(model, settings: CellSettings, images: torch.Tensor) -> np.ndarray:
    """Softmax probabilities (float64) of uint8 image rows, through the evaluation batches."""
    device = next(model.parameters()).device
    labels = torch.zeros(len(images), dtype=torch.long)
    batches = make_batches(settings, images, labels, np.arange(len(images)), device, False)
    logits, _ = predict(model, batches)
    return logits.double().softmax(1).numpy()


def predict_images(
    dataset: str | None,
    inputs: list[Path],
    cell: Path | None = None,
    project: Path = Path(),
    threads: int | None = None,
) -> Predictions:
    """Run a cell (``cell``: a cell or candidate directory; None: the dataset's validation-best
    cell) on the image files and folders ``inputs``."""
    if dataset is None and cell is None:
        raise TransferGridError("name the dataset (--dataset) or a cell (--cell)")
    paths = find_images(inputs)  # bad input fails before a model is loaded
    info = dataset_info(dataset, project) if dataset is not None else None
    candidate = resolve_candidate(Path(cell) if cell is not None else best_cell(dataset, project))
    model, trained = load_cell(candidate, project)
    if dataset is None:
        dataset = trained.settings.dataset
        info = dataset_info(dataset, project)
    elif trained.settings.dataset != dataset:
        raise TransferGridError(
            f"cell {candidate} was trained on dataset {trained.settings.dataset!r}, not {dataset!r}"
        )
    if list(info["classes"]) != trained.classes:
        raise TransferGridError(
            f"cell {candidate} was trained on classes {trained.classes}, but {project / DATASETS_DIR / dataset} "
            f"now lists {info['classes']}: the dataset changed since; rerun the workflow"
        )
    mode = "L" if info["channels"] == 1 else "RGB"
    batch = trained.settings.batch_size
    chunk = batch * max(1, CHUNK_IMAGES // batch)
    probabilities = [
        class_probabilities(
            model,
            trained.settings,
            decode_images(paths[start : start + chunk], trained.settings.image_size, mode, threads),
        )
        for start in range(0, len(paths), chunk)
    ]
    return Predictions(paths, trained.classes, np.concatenate(probabilities), trained)


def write_predictions(predictions: Predictions, out: Path | None) -> None:
    """One row per image: path, predicted class, its probability, then p_<class> for every class;
    to ``out`` (written atomically) or to standard output."""

    def write(handle) -> None:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*FIXED_COLUMNS, *(f"p_{name}" for name in predictions.classes)])
        for path, pred, probs in zip(predictions.paths, predictions.predicted, predictions.probabilities):
            writer.writerow([str(path), predictions.classes[pred], f"{probs[pred]:.6g}", *(f"{p:.6g}" for p in probs)])

    if out is None:
        write(sys.stdout)
        sys.stdout.flush()
        return
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as handle:
        write(handle)


def summary_line(predictions: Predictions, out: Path | None) -> str:
    cell = predictions.cell
    try:
        val_acc = f" (validation accuracy {float(read_json(cell.candidate_dir / 'train.json')['best_val_acc']):.4f})"
    except (OSError, ValueError, KeyError, TypeError):
        val_acc = ""
    counts = Counter(predictions.classes[i] for i in predictions.predicted)
    predicted = ", ".join(f"{name} {count}" for name, count in counts.most_common())
    return (
        f"predicted {len(predictions.paths)} image(s) with cell {cell.candidate_dir}{val_acc} into "
        f"{out if out is not None else 'standard output'}: {predicted}"
    )


def run_predict(
    dataset: str | None,
    inputs: list[Path],
    cell: Path | None = None,
    out: Path | None = None,
    project: Path = Path(),
    log: Callable[[str], None] = print,
) -> Predictions:
    """``transfergrid predict``: predict, write the CSV, log one summary line."""
    predictions = predict_images(dataset, inputs, cell, project)
    write_predictions(predictions, out)
    log(summary_line(predictions, out))
    return predictions
