"""The modules the head registry (``heads.HEADS``) builds."""

from __future__ import annotations

import torch
from torch import nn


def linear_head(num_features: int, num_classes: int, options: dict) -> nn.Module:
    return nn.Linear(num_features, num_classes)


class BatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that tolerates a training batch of one row (a last partial batch of size 1):
    such a batch is normalised with the running statistics, which it leaves untouched, instead of
    raising. Same parameters and state-dict keys as ``nn.BatchNorm1d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1 and self.track_running_stats:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


def mlp_head(num_features: int, num_classes: int, options: dict) -> nn.Module:
    """(Linear -> ReLU -> BatchNorm1d -> Dropout) per hidden width, then Linear."""
    hidden = options.get("hidden", [512])
    hidden = [hidden] if isinstance(hidden, int) else list(hidden)
    dropout = float(options.get("dropout", 0.5))
    if not hidden or any(int(w) < 1 for w in hidden) or not 0 <= dropout <= 1:
        raise ValueError(f"mlp head: hidden must be positive widths and 0 <= dropout <= 1, got {options}")
    layers, width = [], num_features
    for out in map(int, hidden):
        layers += [nn.Linear(width, out), nn.ReLU(inplace=True), BatchNorm1d(out), nn.Dropout(dropout)]
        width = out
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def standardized(head: nn.Module, num_features: int) -> nn.Module:
    """``head`` reading its input through a BatchNorm without affine parameters: batch statistics in
    training, in evaluation the cumulative average of every training batch's (``momentum=None``,
    exact for fixed features instead of an exponential average that depends on the step count)."""
    return nn.Sequential(BatchNorm1d(num_features, affine=False, momentum=None), head)
