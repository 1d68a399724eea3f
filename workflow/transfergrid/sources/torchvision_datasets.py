"""``torchvision`` sources: a torchvision.datasets class by name, with its own train/val/test splits."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, one_line
from .common import Collected, Options, class_choice, required_key
from .memory import InMemorySource, InMemorySplit, collect_in_memory

# Tried in order for classes that take ``split=``; "train" is required, the others optional.
_SPLIT_CANDIDATES = {"train": ("train", "trainval"), "val": ("val",), "test": ("test",)}


def _torchvision_class(name: str, class_name: str):
    import torch.utils.data
    import torchvision.datasets

    def usable(candidate: Any) -> bool:
        if not (inspect.isclass(candidate) and issubclass(candidate, torch.utils.data.Dataset)):
            return False
        parameters = inspect.signature(candidate).parameters
        return "train" in parameters or "split" in parameters

    cls = getattr(torchvision.datasets, class_name, None) if isinstance(class_name, str) else None
    if cls is None or not usable(cls):
        valid = sorted(n for n in dir(torchvision.datasets) if usable(getattr(torchvision.datasets, n)))
        raise DataError(
            f"datasets.{name}.name: {class_name!r} is not a torchvision dataset with a train/test split; "
            f"valid include: {', '.join(valid)}"
        )
    return cls


def _instantiate(name: str, cls, root: Path, download: bool, split_kwargs: dict):
    try:
        return cls(root=str(root), download=download, **split_kwargs)
    except ValueError:
        raise  # an unsupported split value: the caller tries the next candidate
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
        hint = "" if download else " (download: false; is the dataset under root?)"
        raise DataError(
            f"datasets.{name}: torchvision {cls.__name__} at root {root} failed: {one_line(error)}{hint}"
        ) from error


def _torchvision_splits(name: str, cls, root: Path, download: bool) -> dict[str, Any]:
    """{split: dataset}: train and test for ``train=`` classes; train[, val][, test] for ``split=``."""
    if "train" in inspect.signature(cls).parameters:
        try:
            return {s: _instantiate(name, cls, root, download, {"train": s == "train"}) for s in ("train", "test")}
        except ValueError as error:
            raise DataError(f"datasets.{name}: torchvision {cls.__name__} failed: {one_line(error)}") from error
    datasets = {}
    for split, candidates in _SPLIT_CANDIDATES.items():
        for candidate in candidates:
            try:
                datasets[split] = _instantiate(name, cls, root, download, {"split": candidate})
                break
            except ValueError:
                continue
    if "train" not in datasets:
        raise DataError(f"datasets.{name}: torchvision {cls.__name__} offers no 'train' or 'trainval' split")
    return datasets


def _dataset_labels(dataset) -> list[int]:
    """Labels without decoding images where the dataset keeps them in an attribute."""
    for attribute in ("targets", "labels", "_labels"):
        labels = getattr(dataset, attribute, None)
        if labels is not None and len(labels) == len(dataset):
            return np.asarray(labels).astype(int).tolist()
    return [int(dataset[i][1]) for i in range(len(dataset))]


def _load_torchvision(name: str, spec: dict, out_dir: Path) -> InMemorySource:
    cls = _torchvision_class(name, required_key(name, spec, "name"))
    root = Path(spec.get("root") or out_dir / "download").expanduser().absolute()
    datasets = _torchvision_splits(name, cls, root, bool(spec.get("download", True)))
    splits, labels_seen = [], set()
    for split, dataset in datasets.items():
        labels = _dataset_labels(dataset)
        labels_seen.update(labels)
        splits.append(InMemorySplit(split, labels, lambda i, ds=dataset: ds[i][0]))
    declared = getattr(next(iter(datasets.values())), "classes", None)
    if declared and all(0 <= label < len(declared) for label in labels_seen):
        class_names = {i: str(c) for i, c in enumerate(declared)}
    else:
        class_names = {label: str(label) for label in sorted(labels_seen)}
    return InMemorySource(class_names, splits)


def collect_torchvision(name: str, spec: dict, out_dir: Path, archive: Path | None, options: Options, log) -> Collected:
    return collect_in_memory(_load_torchvision(name, spec, out_dir), out_dir, options, class_choice(name, options))
