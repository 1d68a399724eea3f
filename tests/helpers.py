"""Builders shared by the unit tests: tiny cells, tiny tensors."""

import numpy as np
import torch

from transfergrid.backbones import PretrainedCfg
from transfergrid.batches import TensorBatches
from transfergrid.settings import CellSettings

TEST_NORMALISATION = PretrainedCfg(32, (0.5,) * 3, (0.25,) * 3)


def cell_config(**overrides) -> CellSettings:
    """The settings of a tiny CPU cell (resnet18 at 32 px, 2 epochs, batch 8), with overrides."""
    cell = {
        "dataset": "digits",
        "fraction": 1.0,
        "backbone": "resnet18",
        "weights": "none",
        "strategy": "full",
        "head": "linear",
        "seed": 0,
        "image_size": 32,
        "epochs": 2,
        "batch_size": 8,
        "augment": "none",
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4},
        "schedule": {"name": "step", "step_size": 7, "gamma": 0.1, "warmup_epochs": 0},
        "label_smoothing": 0.0,
        "device": "cpu",
        "precision": "fp32",
        "channels_last": False,
        "compile": False,
        "cudnn_benchmark": False,
        "train_bn": False,
        "precise_bn": "auto",
        "early_stopping_patience": None,
        "discriminative_lr": None,
        "strategy_options": {},
        "head_options": {},
        "features": False,
        "lr_multiplier": 1.0,
    }
    cell.update(overrides)
    return CellSettings.from_dict(cell)


def random_batches(n=24, size=32, classes=3, seed=0, channels=3, train=True):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % classes
    return TensorBatches(
        images, labels, np.arange(n), 8, torch.device("cpu"), TEST_NORMALISATION, seed=seed if train else None
    )


def snapshot(module):
    """Every parameter and buffer, cloned."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed_keys(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}
