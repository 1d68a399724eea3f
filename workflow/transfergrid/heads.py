"""Classification heads: a registry of builders from (feature size, class count) to a module.

A head consumes the backbone's pooled feature vector. Adding a head is one ``HEADS`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class HeadSpec:
    name: str
    build: Callable[[int, int, dict], nn.Module]
    loss: str = "cross_entropy"


def _linear(num_features: int, num_classes: int, options: dict) -> nn.Module:
    return nn.Linear(num_features, num_classes)


HEADS: dict[str, HeadSpec] = {spec.name: spec for spec in (HeadSpec("linear", _linear),)}


def build_head(name: str, num_features: int, num_classes: int, options: dict | None = None) -> nn.Module:
    return HEADS[name].build(num_features, num_classes, options or {})
