"""Every collected image is decoded once; then manifest.csv and classes.json are written."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ..errors import DataError, one_line
from ..io import write_csv, write_json
from .common import GRAYSCALE_MODES, Collected, ImageRecord, Options

_MAX_NAMED_FILES = 3  # corrupt files named in an error message


def _manifest_path(path: Path, out_dir: Path) -> str:
    try:
        return path.relative_to(out_dir).as_posix()
    except ValueError:
        return str(path)


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


def finalise(name: str, kind: str, collected: Collected, out_dir: Path, options: Options, log) -> dict:
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
