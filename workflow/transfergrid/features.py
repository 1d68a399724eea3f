"""Feature cache: one forward pass of a frozen backbone per backbone x weights x dataset.

A frozen backbone in eval mode is a fixed function of the image, so for ``frozen`` cells without
augmentation (and without ``train_bn``) the features of every manifest row are computed once, by
their own rule, and shared by every head, seed and fraction of that backbone x weights x dataset.
Those cells then train their head on the cached features (``batches.FeatureBatches`` +
``HeadOnlyModel``), which is the same experiment as training through the frozen network: same
batches in the same order, same head, same loss; only the backbone's forward pass is not repeated.

File format (``torch.save``, loadable with ``weights_only=True``)::

    {"pooled":  float32 [N, num_features],      # backbone(x): the native pooled vector
     "spatial": float32 [N, feature_channels],  # backbone.global_average(backbone.forward_features(x))
     "labels":  int64 [N],                      # manifest labels, manifest row order
     "backbone": str, "weights": str, "init_seed": int,   # the frozen base the features come from
     "backbone_params": int, "num_stages": int, "aux_features": int | None}

Rows are manifest rows (all splits), so the split table's ``row`` indices select from it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import PretrainedCfg, native_preprocessing, resolve_backbone
from .batches import GPU_EVAL_BATCH_SIZE, TensorBatches
from .folding import example_input
from .imagecache import load_cache
from .io import atomic_path
from .model import build_base
from .runtime import autocast, prepare_inference_model, prepare_job, resolve_precision


@dataclass(frozen=True)
class FeatureSource:
    """The frozen network a feature cache comes from: backbone, weights and, for a random base,
    the seed of the cells that use it."""

    backbone: str
    weights: str
    weights_file: Path | None = None
    init_seed: int = 0

    def build(self) -> nn.Module:
        """The cell's backbone, built and loaded exactly as ``model.build_model`` does."""
        return build_base(self.backbone, self.weights_file, self.init_seed)

    @property
    def normalisation(self) -> PretrainedCfg:
        return native_preprocessing(resolve_backbone(self.backbone), self.weights)


@torch.inference_mode()
def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    normalisation: PretrainedCfg,
    batch_size: int,
    device: torch.device,
    rows: np.ndarray | None = None,
    chunk_rows: int = 16384,
    precision: str = "fp32",
    channels_last: bool = False,
) -> dict[str, torch.Tensor]:
    """``{"pooled": [N, num_features], "spatial": [N, feature_channels]}`` float32 on the CPU.

    Images go through ``TensorBatches`` in row order (same conversion, grayscale expansion and
    normalisation as training); one backbone pass per batch yields both outputs. ``rows`` defaults
    to every row; they are processed in chunks so that a GPU never holds more than ``chunk_rows``
    images at once. The backbone is put in eval mode (and on ``device``) and restored to its mode.
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    dummy_labels = torch.zeros(len(images), dtype=torch.long)
    was_training = backbone.training
    backbone.to(device).eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    backbone.to(memory_format=memory_format)
    pooled, spatial = [], []
    try:
        for start in range(0, len(rows), max(chunk_rows, batch_size)):
            chunk = rows[start : start + max(chunk_rows, batch_size)]
            for batch, _ in TensorBatches(images, dummy_labels, chunk, batch_size, device, normalisation):
                with autocast(precision, device):
                    fmap = backbone.forward_features(batch.contiguous(memory_format=memory_format))
                    pooled.append(backbone.pool(fmap).float().cpu())
                    spatial.append(backbone.global_average(fmap).float().cpu())
    finally:
        backbone.train(was_training)
    return {"pooled": torch.cat(pooled), "spatial": torch.cat(spatial)}


def pooled_and_spatial(backbone: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Both outputs of one batch, side by side (what ``fold_batch_norms`` checks)."""
    fmap = backbone.forward_features(batch)
    return torch.cat([backbone.pool(fmap).flatten(1), backbone.global_average(fmap).flatten(1)], 1)


def build_feature_cache(
    source: FeatureSource,
    image_cache: Path,
    out_path: Path,
    batch_size: int = 256,
    device: str = "auto",
    threads: int = 1,
    log=print,
    precision: str = "fp32",
    channels_last: bool = False,
) -> dict:
    """Extract pooled and spatial features of every row of the image cache and write them atomically."""
    torch_device = prepare_job(threads, device)
    if torch_device.type == "cuda":
        batch_size = max(batch_size, GPU_EVAL_BATCH_SIZE)
    precision = resolve_precision(precision, torch_device)
    images, labels = load_cache(image_cache)
    net = source.build()
    backbone_params = sum(p.numel() for p in net.parameters())  # before folding merges parameters
    example = example_input(*images.shape[-2:])
    net = prepare_inference_model(net, pooled_and_spatial, example, precision, torch_device, log)
    started = time.perf_counter()
    features = extract_features(
        net, images, source.normalisation, batch_size, torch_device, precision=precision, channels_last=channels_last
    )
    seconds = time.perf_counter() - started
    payload = {
        **features,
        "labels": labels.clone(),
        "backbone": source.backbone,
        "weights": source.weights,
        "init_seed": source.init_seed,
        "precision": precision,
        # What a head trained on these features reports about its frozen base.
        "backbone_params": backbone_params,
        "num_stages": net.num_stages,
        "aux_features": net.aux_features,
        # What the extraction cost: part of the cost of every head trained on these features.
        "extraction_seconds": seconds,
    }
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    summary = {
        "num_images": len(labels),
        "num_features": features["pooled"].shape[1],
        "feature_channels": features["spatial"].shape[1],
        "seconds": seconds,
        "images_per_second": len(labels) / seconds if seconds > 0 else None,
        "device": str(torch_device),
        "precision": precision,
    }
    log(f"features {source.backbone}/{source.weights}: {summary}")
    return summary


def load_features(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


class HeadOnlyModel(nn.Module):
    """A head trained on cached features: the trainer's model interface without the backbone.

    ``frozen_params`` is the backbone's parameter count, so cell metrics still report the frozen base.
    Its state dict keys are ``head.*``, the same as the head's keys inside a TransferModel.
    """

    def __init__(self, head: nn.Module, frozen_params: int = 0, num_stages: int = 1):
        super().__init__()
        self.head = head
        self.frozen_params = int(frozen_params)
        self.num_stages = num_stages  # what strategy.phase(epoch, num_stages) is asked with

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def apply_phase(self, phase) -> None:
        """Nothing to freeze: the base is frozen by construction. A phase that trains it is an error."""
        if not phase.whole_base:
            raise ValueError(f"cached features need a fully frozen base, got phase {phase}")
        for parameter in self.head.parameters():
            parameter.requires_grad_(True)

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.head.parameters() if p.requires_grad)
        frozen = self.frozen_params + sum(p.numel() for p in self.head.parameters() if not p.requires_grad)
        return {"trainable_params": trainable, "frozen_params": frozen, "total_params": trainable + frozen}


def head_only_model(model: nn.Module) -> HeadOnlyModel:
    """A HeadOnlyModel sharing ``model.head`` (a TransferModel); everything else counts as frozen, as
    in ``model.parameter_counts()`` under the frozen strategy."""
    head_ids = {id(p) for p in model.head.parameters()}
    frozen = sum(p.numel() for p in model.parameters() if id(p) not in head_ids)
    return HeadOnlyModel(model.head, frozen, model.num_stages)


def head_state_into_model(model: nn.Module, head_state: dict) -> nn.Module:
    """Load a head's weights into ``model.head`` (strict) and return ``model``.

    ``head_state`` is a HeadOnlyModel state dict (``head.*`` keys, e.g. ``FitResult.best_state``) or
    the head's own state dict. ``model.state_dict()`` is then the cell's full TransferModel state.
    """
    if head_state and all(key.startswith("head.") for key in head_state):
        head_state = {key[len("head.") :]: value for key, value in head_state.items()}
    model.head.load_state_dict(head_state, strict=True)
    return model


def measure_similarity(features_path: Path, split_csv: Path, out_json: Path, log=print) -> dict:
    """The target's similarity to the source of its pretrained features (``similarity``: GBC
    separability with a bootstrap), from the cached pooled features of its training images."""
    from .io import write_json
    from .similarity import target_similarity
    from .split import read_split, split_rows

    payload = load_features(features_path)
    rows = split_rows(read_split(split_csv), "train")
    features = payload["pooled"][torch.as_tensor(rows)].numpy()
    labels = payload["labels"][torch.as_tensor(rows)].numpy()
    result = {"backbone": payload["backbone"], "weights": payload["weights"], **target_similarity(features, labels)}
    log(f"similarity {result['separability']:.4f} (bootstrap std {result['std']:.4f}): {result['method']}")
    write_json(out_json, result)
    return result
