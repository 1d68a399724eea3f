"""The experiment grid: which cells exist and the settings of each. Torch-free (parse time).

A cell lives in ``results/cells/{dataset}/{fraction}/{backbone}/{weights}/{strategy}/{head}/seed{seed}``
(``naming.CELL_PATTERN``) so Snakemake reruns exactly the cells whose inputs or settings changed.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from .backbones.registry import native_preprocessing, resolve_backbone
from .heads import HEADS
from .naming import Cell, format_fraction
from .settings import CellSettings, OptimizerSettings, PretrainJob, ScheduleSettings
from .strategies import parse_strategy


def cell_weights(strategy: str, weights: str) -> str:
    """Recipes such as `scratch` always start from the same weights, whatever the backbone lists."""
    return parse_strategy(strategy).forced_weights or weights


def excluded_reason(strategy: str, weights: str, head: str) -> str | None:
    """Why a recipe cannot run as named, or None when it can: a head fit in closed form on cached
    features (logreg) needs a frozen base, and two_phase/gradual mean nothing from random weights."""
    if HEADS[head].frozen_only and strategy != "frozen":
        return f"head {head!r} needs strategy 'frozen'"
    if parse_strategy(strategy).pretrained_only and weights == "none":
        return f"strategy {strategy!r} needs pretrained weights"
    return None


def grid_combinations(config: dict):
    """Every (dataset, fraction, backbone, weights, strategy, head, seed) of the grid axes; each
    backbone only with its own weight sources; weights as the strategy forces them."""
    grid = config["grid"]
    models = [(entry["name"], weights) for entry in grid["backbones"] for weights in entry["weights"]]
    combos = itertools.product(
        grid["datasets"],
        [format_fraction(f) for f in grid["fractions"]],
        models,
        grid["strategies"],
        grid["heads"],
        grid["seeds"],
    )
    for dataset, fraction, (backbone, weights), strategy, head, seed in combos:
        yield Cell(dataset, fraction, backbone, cell_weights(strategy, weights), strategy, head, int(seed))


def expand_cells(config: dict) -> list[Cell]:
    """The cells of the grid: every runnable combination, once, in config order."""
    cells = [
        cell for cell in grid_combinations(config) if excluded_reason(cell.strategy, cell.weights, cell.head) is None
    ]
    return list(dict.fromkeys(cells))  # drop duplicates (e.g. scratch over several weights), keep order


def image_size(config: dict, backbone: str, weights: str) -> int:
    """The configured input size, or the backbone's native size for these weights."""
    if config["train"]["image_size"]:
        return int(config["train"]["image_size"])
    return native_preprocessing(resolve_backbone(backbone), weights).input_size


def uses_feature_cache(strategy: str, augment: str, train_bn: bool) -> bool:
    """Whether a cell can train on cached features: frozen base, no augmentation, BN statistics fixed."""
    return strategy == "frozen" and augment == "none" and not train_bn


def trains_on_features(head: str, strategy: str, train: dict) -> bool:
    """Closed-form heads always read cached features; other frozen cells do when the cache is on."""
    return HEADS[head].fit == "sklearn" or (
        train["feature_cache"] and uses_feature_cache(strategy, train["augment"], train["train_bn"])
    )


def cell_settings(config: dict, cell: Cell) -> CellSettings:
    """Everything that determines a cell's result (its cell.json).

    Snakemake passes this as a rule parameter, so changing a setting reruns exactly the cells it
    affects and nothing else.
    """
    train = config["train"]
    return CellSettings(
        dataset=cell.dataset,
        fraction=float(cell.fraction),
        backbone=cell.backbone,
        weights=cell.weights,
        strategy=cell.strategy,
        head=cell.head,
        seed=int(cell.seed),
        image_size=image_size(config, cell.backbone, cell.weights),
        epochs=int(train["epochs"]),
        batch_size=int(train["batch_size"]),
        augment=train["augment"],
        optimizer=OptimizerSettings(**train["optimizer"]),
        schedule=ScheduleSettings(**train["schedule"]),
        label_smoothing=float(train["label_smoothing"]),
        device=train["device"],
        train_bn=bool(train["train_bn"]),
        early_stopping_patience=train["early_stopping_patience"],
        discriminative_lr=train["discriminative_lr"],
        strategy_options=dict(train["strategy_options"].get(cell.strategy.partition(":")[0], {})),
        head_options=dict(train["head_options"].get(cell.head, {})),
        features=trains_on_features(cell.head, cell.strategy, train),
    )


def pretrain_job(config: dict, backbone: str, name: str) -> PretrainJob:
    """The settings of ``pretrain:<name>`` for ``backbone``: a scratch/full/linear cell on the source
    dataset with the `train` settings, and the `pretrain.<name>` overrides."""
    entry = config["pretrain"][name]  # validation filled in the entries that `pretrain:<dataset>` implies
    cell = Cell(entry["dataset"], format_fraction(entry["fraction"]), backbone, "none", "full", "linear", entry["seed"])
    settings = cell_settings(config, cell)
    overrides = {}
    if entry["epochs"]:
        overrides["epochs"] = int(entry["epochs"])
    if entry["lr"]:
        overrides["optimizer"] = replace(settings.optimizer, lr=float(entry["lr"]))
    if entry["image_size"]:
        overrides["image_size"] = int(entry["image_size"])
    return PretrainJob(name, settings.replace(**overrides), entry["classes"])


def dataset_fractions(config: dict, dataset: str) -> list[float]:
    """Every training fraction some job takes of ``dataset``: the grid's, and its pretrain entries'."""
    fractions = list(config["grid"]["fractions"]) if dataset in config["grid"]["datasets"] else []
    fractions += [entry["fraction"] for entry in config["pretrain"].values() if entry["dataset"] == dataset]
    return sorted({float(f) for f in fractions})
