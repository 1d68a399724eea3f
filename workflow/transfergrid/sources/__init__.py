"""Dataset sources (builtin, folder, url, torchvision) turned into one canonical form.

Whatever the source, ``build_dataset`` leaves in ``out_dir``:

* ``manifest.csv`` -- one row per image: ``path`` (relative to out_dir when under it, else
  absolute), ``label`` (index into classes.json's class list), ``class_name``, ``split``
  (``train``/``val``/``test`` for pre-split sources, else empty);
* ``classes.json`` -- classes (sorted, or the ``classes`` subset in its given order), counts,
  whether pre-split, channels, skipped corrupt files;
* ``images/`` -- PNGs materialised by builtin/torchvision sources, the extracted archive of a
  url source, empty for a folder source (its images are referenced in place).

Every listed image has been opened and fully decoded, so training never meets a corrupt file.
A ``classes`` subset (names or label indices, ``common.choose_classes``) applies to every source
kind before ``max_per_class``; the classes left out are never read or written.
One module per source kind (folder, archive for url, builtin, torchvision_datasets, and memory
for writing in-memory images); common holds what they share, checks decodes every image and
writes the outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from .archive import collect_url, extraction_limits
from .builtin import BUILTIN_DATASETS, FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN_DIR, collect_builtin, read_idx
from .checks import finalise
from .common import (
    GRAYSCALE_MODES,
    IMAGE_EXTENSIONS,
    SOURCE_KINDS,
    SPLITS,
    Collected,
    ImageRecord,
    choose_classes,
    images_under,
    parse_options,
)
from .folder import collect_folder
from .memory import InMemorySource, InMemorySplit, as_uint8_image
from .torchvision_datasets import collect_torchvision

__all__ = [
    "BUILTIN_DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEBIAN_DIR",
    "GRAYSCALE_MODES",
    "IMAGE_EXTENSIONS",
    "SOURCE_COLLECTORS",
    "SOURCE_KINDS",
    "SPLITS",
    "ImageRecord",
    "InMemorySource",
    "InMemorySplit",
    "as_uint8_image",
    "build_dataset",
    "choose_classes",
    "extraction_limits",
    "images_under",
    "read_idx",
]

# A new kind also names its modules in SOURCE_CODE (workflow/rules/common.smk), the code version
# of its datasets.
SOURCE_COLLECTORS: dict[str, Callable[..., Collected]] = {
    "builtin": collect_builtin,
    "folder": collect_folder,
    "url": collect_url,
    "torchvision": collect_torchvision,
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
    options = parse_options(name, spec)
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    collected = collector(name, spec, out_dir, Path(archive) if archive is not None else None, options, log)
    info = finalise(name, kind, collected, out_dir, options, log)
    log(f"{name}: {info['num_images']} images, {len(info['classes'])} classes, {len(info['skipped'])} skipped")
    return info
