"""What every source shares: the record types, the option keys and the directory conventions."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ConfigError, DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
SOURCE_KINDS = ("builtin", "folder", "url", "torchvision")
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# Directory entries that are never classes or images: hidden files and macOS archive litter.
_IGNORED_NAMES = ("__MACOSX",)


class ImageRecord(NamedTuple):
    path: Path  # absolute
    class_name: str
    split: str  # "train"/"val"/"test", or "" when the source is not pre-split


@dataclass(frozen=True)
class Options:
    """The keys every source accepts."""

    on_corrupt: str = "fail"
    max_per_class: int | None = None
    seed: int = 0
    classes: tuple | None = None  # the class subset, by name or label index, in its label order


# What a source does with its class list (in label order): keep it, or take a subset of it.
ClassChoice = Callable[[list[str]], list[str]]


@dataclass
class Collected:
    """What a source found, before the images are checked and the outputs written."""

    records: list[ImageRecord]
    classes: list[str]  # the classes in label order: every class sorted, or the ``classes`` subset in its order
    presplit: bool


def is_ignored(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_NAMES


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_ignored(path.name)


def visible_subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not is_ignored(p.name))


def limit_per_class(items: Sequence[Any], group_of: Callable[[Any], tuple], limit: int | None, seed: int) -> list:
    """Keep at most ``limit`` items per group, chosen at random but reproducibly; order is kept.

    Each group gets its own RNG seeded from (seed, group), so the pick for one class does not
    change when another class gains or loses files.
    """
    if limit is None:
        return list(items)
    groups: dict[tuple, list[int]] = {}
    for position, item in enumerate(items):
        groups.setdefault(group_of(item), []).append(position)
    kept: set[int] = set()
    for group, positions in groups.items():
        if len(positions) > limit:
            positions = random.Random(f"{seed}/{'/'.join(map(str, group))}").sample(positions, limit)
        kept.update(positions)
    return [item for position, item in enumerate(items) if position in kept]


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def parse_options(name: str, spec: dict) -> Options:
    on_corrupt = spec.get("on_corrupt", "fail")
    if on_corrupt not in ("fail", "skip"):
        raise ConfigError(f"datasets.{name}.on_corrupt must be 'fail' or 'skip', got {on_corrupt!r}")
    max_per_class = spec.get("max_per_class")
    if max_per_class is not None and not is_positive_int(max_per_class):
        raise ConfigError(f"datasets.{name}.max_per_class must be a positive integer or null, got {max_per_class!r}")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"datasets.{name}.seed must be an integer, got {seed!r}")
    classes = spec.get("classes")
    if classes is not None and (not isinstance(classes, (list, tuple)) or not all(map(_is_class_key, classes))):
        raise ConfigError(
            f"datasets.{name}.classes must be a list of class names or label indices, or null, got {classes!r}"
        )
    return Options(
        on_corrupt=on_corrupt,
        max_per_class=max_per_class,
        seed=seed,
        classes=None if classes is None else tuple(classes),
    )


def _is_class_key(item: Any) -> bool:
    return isinstance(item, str) or (isinstance(item, int) and not isinstance(item, bool))


def choose_classes(name: str, classes: Sequence[str], wanted: Sequence | None) -> list[str]:
    """The classes that ``datasets.<name>.classes`` keeps, in its order; every class when it is None.

    ``classes`` is the dataset's whole class list in label order (sorted). The semantics are those
    of ``pretrain.<name>.classes`` (``pretrain.select_classes``, which imports torch, so this is
    its torch-free twin for the sources): an integer within 0..n-1 is a label index, anything else
    a class name; a class named twice counts once; fewer than 2 classes are refused.
    """
    if wanted is None:
        return list(classes)
    where = f"datasets.{name}.classes"
    chosen: list[str] = []
    for item in wanted:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(classes):
            class_name = classes[item]
        elif str(item) in classes:
            class_name = str(item)
        else:
            raise DataError(
                f"{where}: unknown class {item!r}; classes: {list(classes)} (or label indices 0..{len(classes) - 1})"
            )
        if class_name not in chosen:
            chosen.append(class_name)
    if len(chosen) < 2:
        raise DataError(f"{where}: a classifier needs at least 2 classes, got {list(wanted)}")
    return chosen


def class_choice(name: str, options: Options) -> ClassChoice:
    """``choose_classes`` of dataset ``name`` with its options, for a source to apply to its class list."""
    return lambda classes: choose_classes(name, classes, options.classes)


def images_under(directory: Path) -> list[Path]:
    """Every image file under ``directory``, recursively (links followed), in sorted order, hidden
    files and folders left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        found.extend(Path(dirpath, f) for f in sorted(filenames) if is_image_file(Path(f)))
    return found


def required_key(name: str, spec: dict, key: str) -> Any:
    value = spec.get(key)
    if value in (None, ""):
        raise ConfigError(f"datasets.{name}.{key} is required for source '{spec.get('source')}'")
    return value
