"""Mini-batches for training and evaluation: images from the uint8 cache (``TensorBatches``) and
rows of a feature cache (``FeatureBatches``), both with the same seeded order semantics."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch

from .augment import AUGMENTATIONS
from .backbones import PretrainedCfg, native_preprocessing, resolve_backbone
from .heads import HEADS
from .settings import CellSettings

# A GPU evaluates faster in large batches; a CPU does not (batch 32 ran 1.3x faster than 128 for
# tf_efficientnet_lite0 at 224 px here: the activations of a small batch stay in cache).
GPU_EVAL_BATCH_SIZE = 256


def batch_starts(count: int, batch_size: int, drop_last: bool) -> range:
    """Where each batch starts. Training drops a last partial batch when there is a full one: a
    ragged batch changes the tensor shapes, which makes oneDNN and cuDNN plan their kernels again,
    and a batch of one or two rows gives BatchNorm meaningless statistics."""
    stop = count - count % batch_size if drop_last and count >= batch_size else count
    return range(0, stop, batch_size)


def fits_on_device(num_bytes: int, device: torch.device, share: float = 0.5) -> bool:
    """Whether ``num_bytes`` of images can live on the GPU next to a model and its activations;
    otherwise they stay on the host and each batch is copied when it is used."""
    free, _total = torch.cuda.mem_get_info(device)
    return num_bytes <= share * free


def rows_on_device(images, rows: torch.Tensor, device: torch.device, chunk: int = 4096) -> torch.Tensor:
    """``images[rows]`` in device memory, gathered and copied ``chunk`` rows at a time so the host
    never holds more than one chunk."""
    out = torch.empty((len(rows), *images.shape[1:]), dtype=torch.uint8, device=device)
    for start in range(0, len(rows), chunk):
        out[start : start + chunk] = images[rows[start : start + chunk]].to(device, non_blocking=True)
    return out


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
        # On a GPU the rows a cell uses live in device memory (copied once, in chunks), so an epoch
        # is pure tensor work; on a CPU they are read from the cache batch by batch.
        resident = device.type == "cuda" and fits_on_device(len(rows) * int(np.prod(images.shape[1:])), device)
        self.images = rows_on_device(images, rows_tensor, device) if resident else images
        self.labels = labels[rows_tensor].to(device)
        self.rows = torch.arange(len(rows)) if resident else rows_tensor
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
        for start in batch_starts(len(order), self.batch_size, drop_last=self.shuffle):
            positions = order[start : start + self.batch_size]
            images = self.images[self.rows[positions]].to(self.device, non_blocking=True).float().div_(255)
            images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
            images = (images - self.mean) / self.std
            if self.shuffle:
                images = self.augment(images, self.generator)
            yield images, self.labels[positions.to(self.labels.device)]

    def in_row_order(self) -> TensorBatches:
        """The same rows in row order and without augmentation (what BatchNorm statistics are
        recomputed on), sharing this object's images: rows resident on a GPU are not copied again."""
        view = copy.copy(self)
        view.shuffle, view.augment = False, AUGMENTATIONS["none"]
        return view


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
        for start in batch_starts(n, self.batch_size, drop_last=self.shuffle):
            positions = order[start : start + self.batch_size].to(self.device)
            yield self.features[positions], self.labels[positions]

    def in_row_order(self) -> FeatureBatches:
        """The same rows in row order, sharing this object's features (see TensorBatches)."""
        view = copy.copy(self)
        view.shuffle = False
        return view


def make_batches(settings: CellSettings, images, labels, rows, device, train: bool) -> TensorBatches:
    """The image batches a cell trains (shuffled, augmented, seeded) or evaluates on (in row order;
    larger batches on a GPU)."""
    return TensorBatches(
        images,
        labels,
        rows,
        settings.batch_size if train or device.type != "cuda" else max(settings.batch_size, GPU_EVAL_BATCH_SIZE),
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
