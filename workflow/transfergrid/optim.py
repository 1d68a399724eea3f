"""Optimiser and learning-rate schedule of a cell."""

from __future__ import annotations

import math

import torch
from torch import nn

from .settings import CellSettings, OptimizerSettings, ScheduleSettings


def optimizer_groups(model: nn.Module, discriminative_lr: float | None) -> list[dict]:
    if hasattr(model, "optimizer_groups"):
        return model.optimizer_groups(discriminative_lr)
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]


def build_optimizer(model: nn.Module, settings: CellSettings, lr: float) -> torch.optim.Optimizer:
    """A fresh optimizer over the parameters that are trainable right now."""
    optimizer: OptimizerSettings = settings.optimizer
    groups = optimizer_groups(model, settings.discriminative_lr)
    if optimizer.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=optimizer.weight_decay)
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=optimizer.momentum,
        nesterov=optimizer.nesterov and optimizer.momentum > 0,
        weight_decay=optimizer.weight_decay,
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def lr_factor(schedule: ScheduleSettings, epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate for a 0-based epoch."""
    if schedule.name == "step":
        return schedule.gamma ** (epoch // schedule.step_size)
    if schedule.name == "cosine":
        warmup = schedule.warmup_epochs
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        progress = (epoch - warmup) / max(1, epochs - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0
