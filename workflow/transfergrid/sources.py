"""Dataset sources (builtin, folder, url, torchvision) turned into one canonical form.

Whatever the source, ``build_dataset`` leaves in ``out_dir``:

* ``manifest.csv`` -- one row per image: ``path`` (relative to out_dir when under it, else
  absolute), ``label`` (index into the sorted class list), ``class_name``, ``split``
  (``train``/``val``/``test`` for pre-split sources, else empty);
* ``classes.json`` -- classes, counts, whether pre-split, channels, skipped corrupt files;
* ``images/`` -- PNGs materialised by builtin/torchvision sources, the extracted archive of a
  url source, empty for a folder source (its images are referenced in place).

Every listed image has been opened and fully decoded, so training never meets a corrupt file.
"""

from __future__ import annotations

import gzip
import inspect
import os
import random
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from .downloads import download, safe_extract
from .errors import ConfigError, DataError, one_line
from .io import atomic_path, write_csv, write_json

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
SOURCE_KINDS = ("builtin", "folder", "url", "torchvision")
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Directory entries that are never classes or images: hidden files and macOS archive litter.
_IGNORED_NAMES = ("__MACOSX",)
_MAX_NAMED_FILES = 3  # corrupt files named in an error message


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


@dataclass
class Collected:
    """What a source found, before the images are checked and the outputs written."""

    records: list[ImageRecord]
    classes: list[str]  # every class of the dataset, sorted
    presplit: bool


# --------------------------------------------------------------------------- small helpers


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_NAMES


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not _is_ignored(path.name)


def _visible_subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not _is_ignored(p.name))


def _manifest_path(path: Path, out_dir: Path) -> str:
    try:
        return path.relative_to(out_dir).as_posix()
    except ValueError:
        return str(path)


def _limit_per_class(items: Sequence[Any], group_of: Callable[[Any], tuple], limit: int | None, seed: int) -> list:
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


# --------------------------------------------------------------------------- options


def _parse_options(name: str, spec: dict) -> Options:
    on_corrupt = spec.get("on_corrupt", "fail")
    if on_corrupt not in ("fail", "skip"):
        raise ConfigError(f"datasets.{name}.on_corrupt must be 'fail' or 'skip', got {on_corrupt!r}")
    max_per_class = spec.get("max_per_class")
    if max_per_class is not None and (
        isinstance(max_per_class, bool) or not isinstance(max_per_class, int) or max_per_class < 1
    ):
        raise ConfigError(f"datasets.{name}.max_per_class must be a positive integer or null, got {max_per_class!r}")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"datasets.{name}.seed must be an integer, got {seed!r}")
    return Options(on_corrupt=on_corrupt, max_per_class=max_per_class, seed=seed)


def _required_key(name: str, spec: dict, key: str) -> Any:
    value = spec.get(key)
    if value in (None, ""):
        raise ConfigError(f"datasets.{name}.{key} is required for source '{spec.get('source')}'")
    return value


# --------------------------------------------------------------------------- folder sources


def _images_in_class_dir(class_dir: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _is_ignored(d))
        found.extend(Path(dirpath, f) for f in sorted(filenames) if _is_image_file(Path(f)))
    return found


def _class_dir_records(class_dir: Path, split: str) -> list[ImageRecord]:
    images = _images_in_class_dir(class_dir)
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


def _presplit_records(root: Path, split_dirs: list[Path]) -> tuple[list[ImageRecord], list[str]]:
    class_dirs = {d.name: _visible_subdirs(d) for d in split_dirs}
    for split, dirs in class_dirs.items():
        if not dirs:
            raise DataError(f"split directory {root / split} holds no class subdirectories")
    train_classes = {d.name for d in class_dirs["train"]}
    for split, dirs in class_dirs.items():
        unknown = sorted({d.name for d in dirs} - train_classes)
        if unknown:
            raise DataError(f"classes {unknown} in {root / split} have no images in {root / 'train'}")
    records = [
        record
        for split in SPLITS
        for class_dir in class_dirs.get(split, [])
        for record in _class_dir_records(class_dir, split)
    ]
    return records, sorted(train_classes)


def _collect_folder_tree(root: Path) -> Collected:
    """ImageFolder layout: ``class/*`` or pre-split ``train|val|test/class/*``."""
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist or is not a directory")
    top_dirs = _visible_subdirs(root)
    if not top_dirs:
        raise DataError(f"dataset folder {root} holds no class subdirectories")
    if _is_presplit(root, top_dirs):
        records, classes = _presplit_records(root, top_dirs)
        return Collected(records, classes, presplit=True)
    records = [record for class_dir in top_dirs for record in _class_dir_records(class_dir, "")]
    return Collected(records, [d.name for d in top_dirs], presplit=False)


def _empty_images_dir(out_dir: Path) -> None:
    with atomic_path(out_dir / "images") as tmp:
        tmp.mkdir()


def _subsample_files(collected: Collected, options: Options) -> Collected:
    collected.records = _limit_per_class(
        collected.records, lambda r: (r.split, r.class_name), options.max_per_class, options.seed
    )
    return collected


def _collect_folder(name: str, spec: dict, out_dir: Path, archive: Path | None, options: Options, log) -> Collected:
    root = Path(_required_key(name, spec, "path")).expanduser().absolute()
    collected = _collect_folder_tree(root)
    _empty_images_dir(out_dir)
    return _subsample_files(collected, options)


# --------------------------------------------------------------------------- url sources


def _archive_root(name: str, extracted: Path, subdir: str | None) -> Path:
    """The ImageFolder root inside an extracted archive."""
    if subdir:
        root = (extracted / subdir).resolve()
        if not root.is_relative_to(extracted.resolve()) or not root.is_dir():
            raise DataError(
                f"datasets.{name}.subdir: {subdir!r} is not a directory inside the extracted archive {extracted}"
            )
        return extracted / subdir
    entries = [p for p in extracted.iterdir() if not _is_ignored(p.name)]
    top_dirs = [p for p in entries if p.is_dir()]
    has_top_images = any(p.is_file() and _is_image_file(p) for p in entries)
    # Archives usually wrap everything in one folder ("flowers/roses/1.jpg"); step into it,
    # unless that folder is itself the only class (it then holds images, not subfolders).
    if len(top_dirs) == 1 and not has_top_images and _visible_subdirs(top_dirs[0]):
        return top_dirs[0]
    return extracted


def _collect_url(name: str, spec: dict, out_dir: Path, archive: Path | None, options: Options, log) -> Collected:
    url = _required_key(name, spec, "url")
    if archive is None:
        # Normally the Snakemake rule downloads beforehand; this keeps build_dataset usable alone.
        filename = Path(url.split("?", 1)[0].rstrip("/")).name or "archive"
        archive = download(url, spec.get("sha256"), out_dir / "download" / filename)
    extracted = safe_extract(archive, out_dir / "images")
    log(f"{name}: extracted {archive} into {extracted}")
    return _subsample_files(_collect_folder_tree(_archive_root(name, extracted, spec.get("subdir"))), options)


# --------------------------------------------------------------------------- in-memory sources


@dataclass
class InMemorySplit:
    """One split of a dataset whose images live in memory (arrays) or behind an index."""

    split: str  # "train"/"val"/"test", or "" when not pre-split
    labels: Sequence[int]  # the source's label of each image
    image_at: Callable[[int], Any]  # index -> PIL image or uint8 array


@dataclass
class InMemorySource:
    class_names: dict[int, str]  # source label -> class name
    splits: list[InMemorySplit]

    @property
    def presplit(self) -> bool:
        return any(s.split for s in self.splits)


def _as_uint8_image(image: Any) -> Image.Image:
    """PIL image in mode L (grayscale stays grayscale) or RGB."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
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


def _materialise(source: InMemorySource, images_dir: Path, options: Options) -> list[ImageRecord]:
    """Write the (subsampled) images as PNGs under images/<split-or-all>/<class>/<index>.png.

    Written into a temporary directory renamed at the end, so a killed job leaves no half tree.
    """
    dir_names = _class_dir_names(source.class_names.values())
    written: list[tuple[Path, str, str]] = []
    with atomic_path(images_dir) as tmp:
        tmp.mkdir()
        for part in source.splits:
            names = [source.class_names[int(label)] for label in part.labels]
            indices = _limit_per_class(
                range(len(names)),
                lambda i, split=part.split, names=names: (split, names[i]),
                options.max_per_class,
                options.seed,
            )
            for index in indices:
                relative = Path(part.split or "all", dir_names[names[index]], f"{index}.png")
                (tmp / relative.parent).mkdir(parents=True, exist_ok=True)
                _as_uint8_image(part.image_at(index)).save(tmp / relative, format="PNG")
                written.append((relative, names[index], part.split))
    return [ImageRecord(images_dir / relative, cls, split) for relative, cls, split in written]


def _collect_in_memory(source: InMemorySource, out_dir: Path, options: Options) -> Collected:
    records = _materialise(source, out_dir / "images", options)
    return Collected(records, sorted(set(source.class_names.values())), presplit=source.presplit)


# --------------------------------------------------------------------------- builtin datasets


def _load_digits(spec: dict) -> InMemorySource:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixels are 0..16 intensities; stretch to the full uint8 range.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return InMemorySource(
        class_names={i: str(i) for i in range(10)},
        splits=[InMemorySplit("", digits.target.tolist(), images.__getitem__)],
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {body.size} bytes of data, its header promises shape {shape}")
    return body.reshape(shape)


def _load_fashion_mnist_debian(spec: dict) -> InMemorySource:
    directory = FASHION_MNIST_DEBIAN_DIR
    if not directory.is_dir():
        raise DataError(
            f"builtin fashion_mnist_debian needs {directory}: install it with 'apt-get install dataset-fashion-mnist'"
        )
    splits = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(directory / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise DataError(f"{directory}: {prefix} has {len(images)} images but {len(labels)} labels")
        splits.append(InMemorySplit(split, labels.tolist(), images.__getitem__))
    return InMemorySource(dict(enumerate(FASHION_MNIST_CLASSES)), splits)


# Adding a built-in dataset is one entry here: name -> loader(spec) -> InMemorySource.
BUILTIN_DATASETS: dict[str, Callable[[dict], InMemorySource]] = {
    "digits": _load_digits,
    "fashion_mnist_debian": _load_fashion_mnist_debian,
}


def _collect_builtin(name: str, spec: dict, out_dir: Path, archive: Path | None, options: Options, log) -> Collected:
    builtin = _required_key(name, spec, "name")
    loader = BUILTIN_DATASETS.get(builtin)
    if loader is None:
        raise DataError(
            f"datasets.{name}.name: unknown builtin dataset {builtin!r}; valid: {', '.join(sorted(BUILTIN_DATASETS))}"
        )
    return _collect_in_memory(loader(spec), out_dir, options)


# --------------------------------------------------------------------------- torchvision datasets

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
    cls = _torchvision_class(name, _required_key(name, spec, "name"))
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


def _collect_torchvision(
    name: str, spec: dict, out_dir: Path, archive: Path | None, options: Options, log
) -> Collected:
    return _collect_in_memory(_load_torchvision(name, spec, out_dir), out_dir, options)


# --------------------------------------------------------------------------- checking + writing


def _decoded_mode(path: Path) -> tuple[str | None, str | None]:
    """(PIL mode, None) when the file decodes fully, else (None, reason)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.mode, None
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return None, one_line(error) or type(error).__name__


def _check_images(records: list[ImageRecord], log) -> tuple[list[ImageRecord], list[ImageRecord], set[str]]:
    """Split records into (readable, corrupt) and collect the modes of the readable ones."""
    # Decoding releases the GIL, so a few threads help on large folders.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(_decoded_mode, (r.path for r in records), chunksize=64))
    readable, corrupt, modes = [], [], set()
    for record, (mode, reason) in zip(records, results):
        if mode is None:
            log(f"corrupt or unreadable image: {record.path}: {reason}")
            corrupt.append(record)
        else:
            readable.append(record)
            modes.add(mode)
    return readable, corrupt, modes


def _raise_for_corrupt(name: str, corrupt: list[ImageRecord]) -> None:
    named = ", ".join(str(r.path) for r in corrupt[:_MAX_NAMED_FILES])
    more = f" and {len(corrupt) - _MAX_NAMED_FILES} more" if len(corrupt) > _MAX_NAMED_FILES else ""
    raise DataError(
        f"dataset {name}: {len(corrupt)} unreadable image(s): {named}{more} "
        f"(set datasets.{name}.on_corrupt: skip to leave them out)"
    )


def _check_counts(name: str, classes: list[str], records: list[ImageRecord]) -> dict[str, int]:
    if not records:
        raise DataError(f"dataset {name} has no images")
    counts = dict.fromkeys(classes, 0)
    for record in records:
        counts[record.class_name] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"dataset {name}: class(es) {empty} have no readable images")
    return counts


def _finalise(name: str, kind: str, collected: Collected, out_dir: Path, options: Options, log) -> dict:
    """Check every image, then write manifest.csv and classes.json; return the classes.json dict."""
    import pandas as pd

    records, corrupt, modes = _check_images(collected.records, log)
    if corrupt and options.on_corrupt == "fail":
        _raise_for_corrupt(name, corrupt)
    counts = _check_counts(name, collected.classes, records)
    label_of = {c: i for i, c in enumerate(collected.classes)}
    manifest = pd.DataFrame(
        {
            "path": [_manifest_path(r.path, out_dir) for r in records],
            "label": [label_of[r.class_name] for r in records],
            "class_name": [r.class_name for r in records],
            "split": [r.split for r in records],
        }
    )
    info = {
        "dataset": name,
        "source": kind,
        "classes": collected.classes,
        "counts": counts,
        "presplit": collected.presplit,
        "num_images": len(records),
        "skipped": [_manifest_path(r.path, out_dir) for r in corrupt],
        "channels": 1 if modes <= GRAYSCALE_MODES else 3,
    }
    write_csv(manifest, out_dir / "manifest.csv")
    write_json(out_dir / "classes.json", info)
    return info


SOURCE_COLLECTORS: dict[str, Callable[..., Collected]] = {
    "builtin": _collect_builtin,
    "folder": _collect_folder,
    "url": _collect_url,
    "torchvision": _collect_torchvision,
}


def build_dataset(name: str, spec: dict, out_dir: str | Path, archive: str | Path | None = None, log=print) -> dict:
    """Turn one ``datasets:`` config entry into manifest.csv + classes.json (+ images/) in ``out_dir``.

    ``archive`` is the already downloaded (and checksummed) file of a ``url`` source.
    Returns the classes.json dict.
    """
    kind = spec.get("source")
    collector = SOURCE_COLLECTORS.get(kind)
    if collector is None:
        raise ConfigError(f"datasets.{name}.source must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
    options = _parse_options(name, spec)
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    collected = collector(name, spec, out_dir, Path(archive) if archive is not None else None, options, log)
    info = _finalise(name, kind, collected, out_dir, options, log)
    log(f"{name}: {info['num_images']} images, {len(info['classes'])} classes, {len(info['skipped'])} skipped")
    return info
