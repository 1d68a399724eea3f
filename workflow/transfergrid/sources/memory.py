"""Sources whose images live in memory (arrays, PIL images) or behind an index, written out as PNGs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..imagecache import as_8bit, scale_to_uint8
from ..io import atomic_path
from .common import GRAYSCALE_MODES, ClassChoice, Collected, ImageRecord, Options, limit_per_class


@dataclass
class InMemorySplit:
    """One split of a dataset whose images live in memory (arrays) or behind an index."""

    split: str  # "train"/"val"/"test", or "" when not pre-split
    labels: Sequence[int]  # the source's label of each image
    image_at: Callable[[int], Any]  # index -> PIL image or array


@dataclass
class InMemorySource:
    class_names: dict[int, str]  # source label -> class name
    splits: list[InMemorySplit]

    @property
    def presplit(self) -> bool:
        return any(s.split for s in self.splits)


def as_uint8_image(image: Any) -> Image.Image:
    """PIL image in mode L (grayscale stays grayscale) or RGB.

    16-bit, 32-bit and float pixels are scaled to 8 bits, never clipped: see imagecache.scale_to_uint8.
    """
    image = as_8bit(image) if isinstance(image, Image.Image) else Image.fromarray(scale_to_uint8(np.asarray(image)))
    if image.mode in ("L", "RGB"):
        return image
    return image.convert("L" if image.mode in GRAYSCALE_MODES else "RGB")


def _class_dir_names(class_names: Iterable[str]) -> dict[str, str]:
    """Filesystem-safe, unique directory name for each class ("T-shirt/top" -> "T-shirt_top")."""
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for name in sorted(set(class_names)):
        base = re.sub(r"[^\w.-]+", "_", name).strip("._") or "class"
        candidate, suffix = base, 1
        while candidate in used:
            suffix += 1
            candidate = f"{base}_{suffix}"
        used.add(candidate)
        mapping[name] = candidate
    return mapping


def _materialise(source: InMemorySource, images_dir: Path, options: Options, keep: set[str]) -> list[ImageRecord]:
    """Write the images of the classes in ``keep`` (subsampled: max_per_class) as PNGs under
    images/<split-or-all>/<class>/<index>.png; the other classes' images are never decoded.

    Written into a temporary directory renamed at the end, so a killed job leaves no half tree.
    """
    dir_names = _class_dir_names(source.class_names.values())
    written: list[tuple[Path, str, str]] = []
    with atomic_path(images_dir) as tmp:
        tmp.mkdir()
        for part in source.splits:
            names = [source.class_names[int(label)] for label in part.labels]
            indices = limit_per_class(
                [i for i, class_name in enumerate(names) if class_name in keep],
                lambda i, split=part.split, names=names: (split, names[i]),
                options.max_per_class,
                options.seed,
            )
            for index in indices:
                relative = Path(part.split or "all", dir_names[names[index]], f"{index}.png")
                (tmp / relative.parent).mkdir(parents=True, exist_ok=True)
                as_uint8_image(part.image_at(index)).save(tmp / relative, format="PNG")
                written.append((relative, names[index], part.split))
    return [ImageRecord(images_dir / relative, cls, split) for relative, cls, split in written]


def collect_in_memory(source: InMemorySource, out_dir: Path, options: Options, choose: ClassChoice = list) -> Collected:
    """``choose`` takes the sorted class list to the classes kept, in label order."""
    classes = choose(sorted(set(source.class_names.values())))
    records = _materialise(source, out_dir / "images", options, set(classes))
    return Collected(records, classes, presplit=source.presplit)
