"""Seeded, stratified train/val/test splits and nested training-size fractions.

The split file records, for every manifest row, its split and a per-class ``rank`` inside train.
A training fraction f keeps the rows whose rank is below round(f * class size), so the subsets are
nested (0.1 within 0.25 within 1.0) and adding a fraction to the grid never changes the split file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import DataError

SPLITS = ("train", "val", "test")


def _split_class(rows: np.ndarray, shares: dict[str, float], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Shuffle one class's rows and cut off each held-out split: at least one row each while the
    class can spare it, and always at least one row left for train."""
    rows = rng.permutation(rows)
    parts, start = {}, 0
    for split, share in shares.items():
        size = max(0, min(max(1, round(len(rows) * share)), len(rows) - start - 1))
        parts[split] = rows[start : start + size]
        start += size
    parts["train"] = rows[start:]
    return parts


def assign_splits(manifest: pd.DataFrame, val: float, test: float, seed: int) -> pd.Series:
    """Split name per manifest row. Pre-split sources keep their splits; missing ones are carved
    out of train (val first, then test), stratified by label."""
    rng = np.random.default_rng(seed)
    given = manifest["split"].fillna("").astype(str)
    split = given.where(given != "", "train").copy()
    missing = {name: share for name, share in (("test", test), ("val", val)) if not (given == name).any()}
    if not missing:
        return split
    train_rows = manifest.index[split == "train"]
    for label in sorted(manifest.loc[train_rows, "label"].unique()):
        rows = train_rows[manifest.loc[train_rows, "label"] == label].to_numpy()
        for name, part in _split_class(rows, missing, rng).items():
            split.loc[part] = name
    return split


def train_ranks(manifest: pd.DataFrame, split: pd.Series, seed: int) -> pd.Series:
    """A seeded rank of each train row within its class (-1 for val/test rows)."""
    rng = np.random.default_rng(seed + 1)
    ranks = pd.Series(-1, index=manifest.index, dtype=int)
    train = manifest.index[split == "train"]
    for label in sorted(manifest.loc[train, "label"].unique()):
        rows = train[manifest.loc[train, "label"] == label].to_numpy()
        ranks.loc[rng.permutation(rows)] = np.arange(len(rows))
    return ranks


def make_split(manifest: pd.DataFrame, val: float, test: float, seed: int) -> pd.DataFrame:
    """The split table: ``row`` (manifest row), ``label``, ``split``, ``rank``."""
    if val + test >= 1:
        raise DataError(f"split.val + split.test must be below 1, got {val} + {test}")
    manifest = manifest.reset_index(drop=True)
    split = assign_splits(manifest, val, test, seed)
    table = pd.DataFrame(
        {"row": manifest.index, "label": manifest["label"], "split": split, "rank": train_ranks(manifest, split, seed)}
    )
    small = table[table.split == "train"].groupby("label").size()
    if (small < 1).any() or len(small) < manifest["label"].nunique():
        raise DataError("split: some class has no training image; add images or lower split.val/split.test")
    return table


def read_split(path) -> pd.DataFrame:
    return pd.read_csv(path)


def fraction_rows(table: pd.DataFrame, fraction: float) -> np.ndarray:
    """Manifest rows of the nested, stratified training subset of size ``fraction``."""
    train = table[table.split == "train"]
    class_sizes = train.groupby("label")["row"].transform("size")
    keep = train["rank"] < np.maximum(1, np.round(class_sizes * fraction))
    return np.sort(train.loc[keep, "row"].to_numpy())


def split_rows(table: pd.DataFrame, name: str) -> np.ndarray:
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}")
    return np.sort(table.loc[table.split == name, "row"].to_numpy())
