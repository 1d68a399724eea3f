"""Mini-batches for training and evaluation: images from the uint8 cache (``TensorBatches``) and
rows of a feature cache (``FeatureBatches``), both with the same seeded order semantics."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .augment import AUGMENTATIONS
from .backbones import PretrainedCfg, native_preprocessing, resolve_backbone
from .heads import HEADS
from .settings import CellSettings


class TensorBatches:
    """Mini-batches from the uint8 image cache: index, convert, normalise, augment, on the device.

    On a GPU the selected rows are copied to device memory once, so an epoch is pure tensor work.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        rows: np.ndarray,
        batch_size: int,
        device: torch.device,
        normalisation: PretrainedCfg,
        augment: str = "none",
        seed: int | None = None,
    ):
        rows_tensor = torch.as_tensor(rows, dtype=torch.long)
        self.images = images[rows_tensor].to(device) if device.type == "cuda" else images
        self.labels = labels[rows_tensor].to(device)
        self.rows = torch.arange(len(rows)) if device.type == "cuda" else rows_tensor
        self.batch_size, self.device = batch_size, device
        self.mean = torch.tensor(normalisation.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(normalisation.std, device=device).view(1, -1, 1, 1)
        self.augment = AUGMENTATIONS[augment]
        self.shuffle = seed is not None
        self.generator = torch.Generator().manual_seed(seed if seed is not None else 0)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = (
            torch.randperm(len(self.rows), generator=self.generator) if self.shuffle else torch.arange(len(self.rows))
        )
        for start in range(0, len(order), self.batch_size):
            positions = order[start : start + self.batch_size]
            images = self.images[self.rows[positions]].to(self.device, non_blocking=True).float().div_(255)
            images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
            images = (images - self.mean) / self.std
            if self.shuffle:
                images = self.augment(images, self.generator)
            yield images, self.labels[positions.to(self.labels.device)]


class FeatureBatches:
    """Mini-batches of cached feature rows, with ``train.TensorBatches``' order semantics.

    With a seed, every epoch draws ``torch.randperm(len(rows), generator)`` from a generator seeded
    once, exactly as TensorBatches does (without augmentation), so a head sees the same batches as it
    would through the frozen network; without a seed, rows come in the given order.
    """

    def __init__(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        rows: np.ndarray,
        batch_size: int,
        device: torch.device,
        seed: int | None = None,
    ):
        rows_tensor = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        self.features = features[rows_tensor].float().to(device)
        self.labels = labels[rows_tensor].to(device)
        self.batch_size, self.device = batch_size, device
        self.shuffle = seed is not None
        self.generator = torch.Generator().manual_seed(seed if seed is not None else 0)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            positions = order[start : start + self.batch_size].to(self.device)
            yield self.features[positions], self.labels[positions]


def make_batches(settings: CellSettings, images, labels, rows, device, train: bool) -> TensorBatches:
    """The image batches a cell trains (shuffled, augmented, seeded) or evaluates on (in row order)."""
    return TensorBatches(
        images,
        labels,
        rows,
        settings.batch_size,
        device,
        native_preprocessing(resolve_backbone(settings.backbone), settings.weights),
        augment=settings.augment if train else "none",
        seed=settings.seed if train else None,
    )


def feature_batches(settings: CellSettings, payload: dict, rows: np.ndarray, device, train: bool) -> FeatureBatches:
    """The FeatureBatches a cell's head consumes (its spec's ``input``), as ``make_batches``."""
    return FeatureBatches(
        payload[HEADS[settings.head].input],
        payload["labels"],
        rows,
        settings.batch_size,
        device,
        seed=settings.seed if train else None,
    )
