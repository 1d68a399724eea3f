"""``folder`` sources: an ImageFolder tree, flat ``class/*`` or pre-split ``train|val|test/class/*``."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..io import atomic_path
from .common import (
    IMAGE_EXTENSIONS,
    SPLITS,
    ClassChoice,
    Collected,
    ImageRecord,
    Options,
    class_choice,
    images_under,
    limit_per_class,
    required_key,
    visible_subdirs,
)


def _class_dir_records(class_dir: Path, split: str) -> list[ImageRecord]:
    images = images_under(class_dir)
    if not images:
        raise DataError(
            f"class directory {class_dir} holds no images (accepted: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return [ImageRecord(path, class_dir.name, split) for path in images]


def _is_presplit(root: Path, top_dirs: list[Path]) -> bool:
    names = {d.name for d in top_dirs}
    if names <= set(SPLITS) and "train" not in names:
        raise DataError(f"dataset folder {root} has {'/'.join(sorted(names))} subdirectories but no train/")
    return names <= set(SPLITS)


def _presplit_records(root: Path, split_dirs: list[Path], choose: ClassChoice) -> tuple[list[ImageRecord], list[str]]:
    class_dirs = {d.name: visible_subdirs(d) for d in split_dirs}
    for split, dirs in class_dirs.items():
        if not dirs:
            raise DataError(f"split directory {root / split} holds no class subdirectories")
    train_classes = {d.name for d in class_dirs["train"]}
    for split, dirs in class_dirs.items():
        unknown = sorted({d.name for d in dirs} - train_classes)
        if unknown:
            raise DataError(f"classes {unknown} in {root / split} have no images in {root / 'train'}")
    classes = choose(sorted(train_classes))
    records = [
        record
        for split in SPLITS
        for class_dir in class_dirs.get(split, [])
        if class_dir.name in classes
        for record in _class_dir_records(class_dir, split)
    ]
    return records, classes


def collect_folder_tree(root: Path, choose: ClassChoice = list) -> Collected:
    """ImageFolder layout: ``class/*`` or pre-split ``train|val|test/class/*``. ``choose`` takes
    the sorted class list to the classes kept, in label order; the folders of the others are not read."""
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist or is not a directory")
    top_dirs = visible_subdirs(root)
    if not top_dirs:
        raise DataError(f"dataset folder {root} holds no class subdirectories")
    if _is_presplit(root, top_dirs):
        records, classes = _presplit_records(root, top_dirs, choose)
        return Collected(records, classes, presplit=True)
    classes = choose([d.name for d in top_dirs])
    records = [
        record for class_dir in top_dirs if class_dir.name in classes for record in _class_dir_records(class_dir, "")
    ]
    return Collected(records, classes, presplit=False)


def subsample_files(collected: Collected, options: Options) -> Collected:
    """``max_per_class`` on the classes collected (after the ``classes`` subset)."""
    collected.records = limit_per_class(
        collected.records, lambda r: (r.split, r.class_name), options.max_per_class, options.seed
    )
    return collected


def _empty_images_dir(out_dir: Path) -> None:
    with atomic_path(out_dir / "images") as tmp:
        tmp.mkdir()


def collect_folder(name: str, spec: dict, out_dir: Path, archive: Path | None, options: Options, log) -> Collected:
    root = Path(required_key(name, spec, "path")).expanduser().absolute()
    collected = collect_folder_tree(root, class_choice(name, options))
    _empty_images_dir(out_dir)
    return subsample_files(collected, options)
