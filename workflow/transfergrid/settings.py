"""The typed settings of one cell: everything that determines its result, built once from the
validated config and written to the cell's ``cell.json``.

Defaults live in the config schema only: by the time a ``CellSettings`` exists, every value has
been filled in and checked, so no code downstream writes ``.get(key, default)``. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class OptimizerSettings:
    name: str  # "sgd" or "adamw"
    lr: float  # this cell's base rate: the strategy's rate, scaled to the batch size
    momentum: float
    nesterov: bool
    weight_decay: float


@dataclass(frozen=True)
class ScheduleSettings:
    name: str  # "step", "cosine" or "constant"
    step_size: int
    gamma: float
    warmup_epochs: int


@dataclass(frozen=True)
class CellSettings:
    """A cell's coordinates plus every training setting that applies to it."""

    dataset: str
    fraction: float
    backbone: str
    weights: str
    strategy: str
    head: str
    seed: int
    image_size: int
    epochs: int
    batch_size: int
    augment: str
    optimizer: OptimizerSettings
    schedule: ScheduleSettings
    label_smoothing: float
    device: str
    precision: str  # "auto", "fp32" or "bf16" (resolved on the machine that runs the job)
    channels_last: bool
    compile: bool
    cudnn_benchmark: bool
    train_bn: bool
    precise_bn: str  # "auto", "always" or "never": BatchNorm statistics recomputed before validation
    early_stopping_patience: int | None
    discriminative_lr: float | None
    # Only this cell's own strategy and head options: editing another head's options must not
    # rerun this cell.
    strategy_options: dict
    head_options: dict
    features: bool  # the head trains on the cached features of a frozen base
    # The learning-rate candidate: every rate of the recipe (optimizer.lr, two_phase's two rates)
    # is the configured one times this multiplier (``grid.lrs``).
    lr_multiplier: float = 1.0

    def to_dict(self) -> dict:
        # asdict's result, without its recursive deep copy: Snakemake asks for the settings of every
        # training job while it plans the grid. The option dicts are copied one level deep.
        return {
            **self.__dict__,
            "optimizer": dict(self.optimizer.__dict__),
            "schedule": dict(self.schedule.__dict__),
            "strategy_options": dict(self.strategy_options),
            "head_options": dict(self.head_options),
        }

    @classmethod
    def from_dict(cls, data: dict) -> CellSettings:
        """The inverse of ``to_dict``; an unknown or missing key is an error, never ignored."""
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(
                f"cell settings keys differ: unknown {sorted(set(data) - names)}, missing {sorted(names - set(data))}"
            )
        return cls(
            **{
                **data,
                "optimizer": OptimizerSettings(**data["optimizer"]),
                "schedule": ScheduleSettings(**data["schedule"]),
                "strategy_options": dict(data["strategy_options"]),
                "head_options": dict(data["head_options"]),
            }
        )

    def replace(self, **changes: Any) -> CellSettings:
        return replace(self, **changes)


def write_settings(path: str | Path, settings: CellSettings) -> None:
    from .io import write_json

    write_json(path, settings.to_dict())


def read_settings(path: str | Path) -> CellSettings:
    return CellSettings.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class PretrainJob:
    """Everything that determines a ``pretrain:<name>`` backbone (the rule's parameter, so changing
    any of it pretrains again): the training settings of a scratch/full/linear cell on the source
    dataset, the entry's name and its class subset."""

    name: str
    settings: CellSettings
    classes: list | None

    def to_dict(self) -> dict:
        return {"name": self.name, "settings": self.settings.to_dict(), "classes": self.classes}

    @classmethod
    def from_dict(cls, data: dict) -> PretrainJob:
        return cls(data["name"], CellSettings.from_dict(data["settings"]), data["classes"])
