"""The experiment grid: which cells exist and the settings of each. Torch-free (parse time).

A cell lives in ``results/cells/{dataset}/{fraction}/{backbone}/{weights}/{strategy}/{head}/seed{seed}``
(``naming.CELL_PATTERN``) so Snakemake reruns exactly the cells whose inputs or settings changed.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import replace
from pathlib import Path

from .backbones.registry import native_preprocessing, resolve_backbone
from .config import MESSAGE_PREFIX, validate_config
from .errors import ConfigError
from .heads import HEADS, fitted_by_gradient_descent
from .naming import CELLS_ROOT, Cell, format_fraction, format_multiplier, weights_slug
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


def left_out_cells(config: dict) -> dict[str, int]:
    """How many distinct combinations of the grid axes ``expand_cells`` leaves out, by the reason
    ``excluded_reason`` gives, in config order."""
    left_out: dict[str, dict[Cell, None]] = {}
    for cell in grid_combinations(config):
        reason = excluded_reason(cell.strategy, cell.weights, cell.head)
        if reason is not None:
            left_out.setdefault(reason, {})[cell] = None
    return {reason: len(cells) for reason, cells in left_out.items()}


def _cells(count: int) -> str:
    return f"{count} cell" if count == 1 else f"{count} cells"


def prepare_config(config: dict, schema_path: str | Path, check_files: bool = True, notes: bool = True) -> list[Cell]:
    """What common.smk does while Snakemake parses the workflow: validate and complete ``config``
    (see config.validate_config), then expand the grid into its cells. Combinations that cannot
    run are left out with one line per reason on stderr, so that a smaller grid than the axes
    promise is no surprise (``notes`` off: a job re-reading the workflow repeats nothing); a
    ConfigError when nothing is left, rather than a run that ends in `no cells to aggregate`."""
    validate_config(config, schema_path, check_files)
    cells, left_out = expand_cells(config), left_out_cells(config)
    if not cells:
        reasons = "; ".join(f"{_cells(count)}: {reason}" for reason, count in left_out.items())
        raise ConfigError(f"config key 'grid': every combination is left out ({reasons}); nothing to run")
    if notes:
        for reason, count in left_out.items():
            print(f"{MESSAGE_PREFIX}left out {_cells(count)}: {reason}", file=sys.stderr, flush=True)
    return cells


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
    return not fitted_by_gradient_descent(head) or (
        train["feature_cache"] and uses_feature_cache(strategy, train["augment"], train["train_bn"])
    )


def batch_scale(train: dict) -> float:
    """The linear scaling rule: configured rates are per ``lr_reference_batch_size`` images."""
    reference = train["lr_reference_batch_size"]
    return train["batch_size"] / reference if reference else 1.0


def base_learning_rate(train: dict, strategy: str) -> float:
    """The cell's base rate: ``optimizer.lr`` when set, else the strategy kind's rate for the
    optimizer (two_phase, whose phases set their own rates, starts from full's); scaled to the
    batch size."""
    kind = strategy.partition(":")[0]
    rates = train["lr_by_strategy"][train["optimizer"]["name"]]
    rate = train["optimizer"]["lr"] or rates.get(kind, rates["full"])
    return float(rate) * batch_scale(train)


def scaled_strategy_options(train: dict, strategy: str) -> dict:
    """The strategy's own options (editing another strategy's must not rerun this cell), its
    learning rates scaled to the batch size like every other rate."""
    options = dict(train["strategy_options"].get(strategy.partition(":")[0], {}))
    for key in parse_strategy(strategy).rate_options:
        if key in options:
            options[key] = float(options[key]) * batch_scale(train)
    return options


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
        optimizer=OptimizerSettings(**{**train["optimizer"], "lr": base_learning_rate(train, cell.strategy)}),
        schedule=ScheduleSettings(**train["schedule"]),
        label_smoothing=float(train["label_smoothing"]),
        device=train["device"],
        precision=train["precision"],
        channels_last=bool(train["channels_last"]),
        compile=bool(train["compile"]),
        cudnn_benchmark=bool(train["cudnn_benchmark"]),
        train_bn=bool(train["train_bn"]),
        precise_bn=train["precise_bn"],
        early_stopping_patience=train["early_stopping_patience"],
        discriminative_lr=train["discriminative_lr"],
        strategy_options=scaled_strategy_options(train, cell.strategy),
        head_options=dict(train["head_options"].get(cell.head, {})),
        features=trains_on_features(cell.head, cell.strategy, train),
    )


def pretrain_job(config: dict, backbone: str, name: str) -> PretrainJob:
    """The settings of ``pretrain:<name>`` for ``backbone``: a scratch/linear cell on the source
    dataset with the `train` settings, and the `pretrain.<name>` overrides."""
    entry = config["pretrain"][name]  # validation filled in the entries that `pretrain:<dataset>` implies
    cell = Cell(
        entry["dataset"], format_fraction(entry["fraction"]), backbone, "none", "scratch", "linear", entry["seed"]
    )
    settings = cell_settings(config, cell)
    overrides = {}
    if entry["epochs"]:
        overrides["epochs"] = int(entry["epochs"])
    if entry["lr"]:
        overrides["optimizer"] = replace(settings.optimizer, lr=float(entry["lr"]) * batch_scale(config["train"]))
    if entry["image_size"]:
        overrides["image_size"] = int(entry["image_size"])
    return PretrainJob(name, settings.replace(**overrides), entry["classes"])


def dataset_fractions(config: dict, dataset: str) -> list[float]:
    """Every training fraction some job takes of ``dataset``: the grid's, and its pretrain entries'."""
    fractions = list(config["grid"]["fractions"]) if dataset in config["grid"]["datasets"] else []
    fractions += [entry["fraction"] for entry in config["pretrain"].values() if entry["dataset"] == dataset]
    return sorted({float(f) for f in fractions})


# ----------------------------------------------------------------------------------------------
# Learning-rate candidates: one directory each inside a cell


def lr_candidates(config: dict, head: str) -> list[str]:
    """The cell's learning-rate multipliers, as spelled in candidate directories; heads fitted in
    closed form (logreg) have no learning rate and one candidate."""
    if not fitted_by_gradient_descent(head):
        return [format_multiplier(1.0)]
    return [format_multiplier(m) for m in config["grid"]["lrs"]]


def candidate_settings(settings: CellSettings, multiplier: str | float) -> CellSettings:
    """The settings of one learning-rate candidate: every rate of the recipe times ``multiplier``."""
    factor = float(multiplier)
    options = dict(settings.strategy_options)
    for key in parse_strategy(settings.strategy).rate_options:
        if key in options:
            options[key] = options[key] * factor
    return settings.replace(
        optimizer=replace(settings.optimizer, lr=settings.optimizer.lr * factor),
        strategy_options=options,
        lr_multiplier=factor,
    )


# ----------------------------------------------------------------------------------------------
# Frozen heads on cached features: one fitting job and one evaluation job per feature cache


def feature_heads(config: dict) -> list[str]:
    """The grid's heads whose frozen cells train on cached features."""
    return [head for head in config["grid"]["heads"] if trains_on_features(head, "frozen", config["train"])]


def frozen_group_files(config: dict, dataset: str, filename: str, random_base: bool, per_candidate: bool) -> list[str]:
    """Output patterns of a frozen-heads job of ``dataset``: ``filename`` of every frozen feature
    cell (or of every candidate of it) of one feature cache. Wildcards: backbone and weights (a
    pretrained cache, shared by every seed) or backbone and seed (a random base drawn from the seed).
    """
    grid = config["grid"]
    seeds = ["{seed}"] if random_base else [str(seed) for seed in grid["seeds"]]
    weights = "none" if random_base else "{weights}"
    files = []
    for fraction in (format_fraction(f) for f in grid["fractions"]):
        for head in feature_heads(config):
            for seed in seeds:
                cell = f"{CELLS_ROOT}/{dataset}/{fraction}/{{backbone}}/{weights}/frozen/{head}/seed{seed}"
                candidates = lr_candidates(config, head) if per_candidate else [None]
                for lr in candidates:
                    files.append(f"{cell}/lr{lr}/{filename}" if lr else f"{cell}/{filename}")
    return files


def frozen_group_cells(
    config: dict, cells: list[Cell], dataset: str, backbone: str, weights_slug_: str, seed: int | None
) -> list[Cell]:
    """The cells one frozen-heads job serves: frozen feature cells of one dataset, backbone and
    weights (and seed, for a random base), in grid order."""
    heads = set(feature_heads(config))
    # Cheapest tests first: most cells fail on strategy, dataset or backbone.
    return [
        cell
        for cell in cells
        if cell.strategy == "frozen"
        and cell.dataset == dataset
        and cell.backbone == backbone
        and cell.head in heads
        and (seed is None or cell.seed == seed)
        and weights_slug(cell.weights) == weights_slug_
    ]
