"""The experiment grid: cells, their directory layout, and the resolved config of each cell.

A cell lives in ``results/cells/{dataset}/{fraction}/{backbone}/{weights}/{strategy}/{head}/seed{seed}``
so Snakemake reruns exactly the cells whose inputs or settings changed.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

CELLS_ROOT = "results/cells"
CELL_PATTERN = CELLS_ROOT + "/{dataset}/{fraction}/{backbone}/{weights}/{strategy}/{head}/seed{seed}"


def format_fraction(fraction: float) -> str:
    """1 -> '1.0', 0.25 -> '0.25': one spelling per value, so paths are stable."""
    return repr(float(fraction))


@dataclass(frozen=True)
class Cell:
    dataset: str
    fraction: str
    backbone: str
    weights: str
    strategy: str
    head: str
    seed: int

    @property
    def path(self) -> str:
        from .weights import weights_slug  # `file:/a/b.pt` is no path segment; its slug is

        return CELL_PATTERN.format(**{**asdict(self), "weights": weights_slug(self.weights)})


def _cell_weights(strategy: str, weights: str) -> str:
    """Recipes such as `scratch` always start from the same weights, whatever the backbone lists."""
    from .strategies import parse_strategy

    return parse_strategy(strategy).forced_weights or weights


def _compatible(strategy: str, weights: str, head: str) -> bool:
    """Skip recipes that cannot be run as named: a head fit in closed form on cached features
    (logreg) needs a frozen base, and two_phase/gradual mean nothing from random weights."""
    from .heads import HEADS
    from .strategies import parse_strategy

    if getattr(HEADS[head], "frozen_only", False) and strategy != "frozen":
        return False
    return not (parse_strategy(strategy).pretrained_only and weights == "none")


def expand_cells(config: dict) -> list[Cell]:
    """Every combination of the grid axes; each backbone only with its own weight sources."""
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
    cells = [
        Cell(d, f, b, _cell_weights(s, w), s, h, int(seed))
        for d, f, (b, w), s, h, seed in combos
        if _compatible(s, _cell_weights(s, w), h)
    ]
    return list(dict.fromkeys(cells))  # drop duplicates (e.g. scratch over several weights), keep order


def image_size(config: dict, backbone: str, weights: str) -> int:
    """The configured input size, or the backbone's native size for these weights."""
    if config["train"]["image_size"]:
        return int(config["train"]["image_size"])
    from .backbones import preprocessing, resolve_backbone

    return preprocessing(resolve_backbone(backbone), weights).input_size


def cell_config(config: dict, cell: Cell) -> dict:
    """Everything that determines a cell's result, written to its cell.json.

    Snakemake passes this as a rule parameter, so changing a setting reruns exactly the cells it
    affects and nothing else.
    """
    train = config["train"]
    strategy_base = cell.strategy.partition(":")[0]
    settings = {
        **asdict(cell),
        "fraction": float(cell.fraction),
        "image_size": image_size(config, cell.backbone, cell.weights),
        **{
            key: train[key]
            for key in (
                "epochs",
                "batch_size",
                "augment",
                "optimizer",
                "schedule",
                "label_smoothing",
                "device",
                "train_bn",
                "early_stopping_patience",
                "discriminative_lr",
            )
        },
        # Only this cell's own strategy and head options: editing another head's options must not
        # rerun this cell.
        "strategy_options": train["strategy_options"].get(strategy_base, {}),
        "head_options": train["head_options"].get(cell.head, {}),
    }
    settings["features"] = trains_on_features(settings, train["feature_cache"])
    return settings


def trains_on_features(cell: dict, feature_cache: bool) -> bool:
    """Closed-form heads always read cached features; other frozen cells do when the cache is on."""
    from .features import uses_feature_cache
    from .heads import HEADS

    return HEADS[cell["head"]].fit == "sklearn" or (feature_cache and uses_feature_cache(cell))
