"""``url`` sources: a checksummed archive, extracted within the dataset's limits, holding an ImageFolder tree."""

from __future__ import annotations

from pathlib import Path

from ..archives import LIMIT_FIELDS, ExtractionLimits, safe_extract
from ..downloads import download
from ..errors import ConfigError, DataError
from .common import Collected, Options, class_choice, is_ignored, is_image_file, required_key, visible_subdirs
from .folder import collect_folder_tree, subsample_files


def extraction_limits(name: str, spec: dict) -> ExtractionLimits:
    """The archive limits of dataset ``name``: its own keys, else the defaults."""
    values = {}
    for key, field in LIMIT_FIELDS.items():
        value = spec.get(key)
        if value is None:
            continue
        kind = (int, float) if key == "max_compression_ratio" else int
        if isinstance(value, bool) or not isinstance(value, kind) or value < 1:
            noun = "a number" if kind is not int else "an integer"
            raise ConfigError(f"datasets.{name}.{key} must be {noun} of at least 1, got {value!r}")
        values[field] = value
    return ExtractionLimits(**values, config_key=f"datasets.{name}")


def _archive_root(name: str, extracted: Path, subdir: str | None) -> Path:
    """The ImageFolder root inside an extracted archive."""
    if subdir:
        root = (extracted / subdir).resolve()
        if not root.is_relative_to(extracted.resolve()) or not root.is_dir():
            raise DataError(
                f"datasets.{name}.subdir: {subdir!r} is not a directory inside the extracted archive {extracted}"
            )
        return extracted / subdir
    entries = [p for p in extracted.iterdir() if not is_ignored(p.name)]
    top_dirs = [p for p in entries if p.is_dir()]
    has_top_images = any(p.is_file() and is_image_file(p) for p in entries)
    # Archives usually wrap everything in one folder ("flowers/roses/1.jpg"); step into it,
    # unless that folder is itself the only class (it then holds images, not subfolders).
    if len(top_dirs) == 1 and not has_top_images and visible_subdirs(top_dirs[0]):
        return top_dirs[0]
    return extracted


def collect_url(name: str, spec: dict, out_dir: Path, archive: Path | None, options: Options, log) -> Collected:
    url = required_key(name, spec, "url")
    limits = extraction_limits(name, spec)
    if archive is None:
        # Normally the Snakemake rule downloads beforehand; this keeps build_dataset usable alone.
        filename = Path(url.split("?", 1)[0].rstrip("/")).name or "archive"
        archive = download(url, spec.get("sha256"), out_dir / "download" / filename, log=log)
    extracted = safe_extract(archive, out_dir / "images", limits)
    log(f"{name}: extracted {archive} into {extracted}")
    root = _archive_root(name, extracted, spec.get("subdir"))
    return subsample_files(collect_folder_tree(root, class_choice(name, options)), options)
