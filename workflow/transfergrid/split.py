"""Seeded, stratified train/val/test splits and nested training-size fractions.

The split file records, for every manifest row, its split and a per-class ``rank`` inside train.
A training fraction f keeps the rows whose rank is below round(f * class size), so the subsets are
nested (0.1 within 0.25 within 1.0) and adding a fraction to the grid never changes the split file.
"""

from __future__ import annotations

import math

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


def _class_names(manifest: pd.DataFrame) -> dict[int, str]:
    names = manifest["class_name"] if "class_name" in manifest else manifest["label"]
    return {int(label): str(name) for label, name in zip(manifest["label"], names)}


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 'es' if noun.endswith('s') else 's'}"


def _check_classes(manifest: pd.DataFrame, dataset: str) -> None:
    names = sorted(set(_class_names(manifest).values()))
    if len(names) < 2:
        listed = f" ({', '.join(repr(n) for n in names)})" if names else ""
        raise DataError(
            f"{dataset} has {_plural(len(names), 'class')}{listed}; a classifier needs at least 2 "
            "(with one, top-1 accuracy and macro-F1 are 1.0 whatever it learns)"
        )


def _missing_split_problem(label: int, split: str, given: pd.Series, manifest: pd.DataFrame, val, test) -> str:
    """Why class ``label`` has no image in ``split``: too few images to carve it, or none in the source."""
    of_class = manifest["label"] == label
    carved = [name for name in ("val", "test") if not (given == name).any()]
    if split not in carved:
        counts = ", ".join(f"{name} {int((of_class & (given == name)).sum())}" for name in SPLITS)
        return f"has no image in the source's {split} split ({counts}); every class needs one in each split"
    shares = {"val": val, "test": test}
    needed = ", ".join(f"1 {name}" for name in [*carved, "train"])
    if len(carved) == 2:
        return (
            f"has {_plural(int(of_class.sum()), 'image')}; a {val:g}/{test:g} val/test split needs at least "
            f"{len(carved) + 1} per class ({needed})"
        )
    pool = int((of_class & (given.isin(["", "train"]))).sum())
    return (
        f"has {_plural(pool, 'image')} in the source's train split; carving a {shares[carved[0]]:g} "
        f"{carved[0]} split out of it needs at least 2 per class ({needed})"
    )


def _check_every_class_in_every_split(manifest: pd.DataFrame, split: pd.Series, val, test, dataset: str) -> None:
    given = manifest["split"].fillna("").astype(str)
    present = pd.crosstab(manifest["label"], split).reindex(columns=list(SPLITS), fill_value=0) > 0
    lacking = [
        (int(label), name) for label, row in present.iterrows() for name in ("val", "test", "train") if not row[name]
    ]
    if not lacking:
        return
    label, name = lacking[0]
    problem = _missing_split_problem(label, name, given, manifest, val, test)
    empty = [s for s in ("val", "test") if not present[s].any()]
    notes = "".join(f"; the {s} split is empty" for s in empty)
    others = len({label for label, _ in lacking}) - 1
    more = f" (and {_plural(others, 'more class')})" if others else ""
    raise DataError(f"{dataset}: class {_class_names(manifest)[label]!r} {problem}{more}{notes}")


def _train_images_needed(fraction: float) -> int:
    """The fewest training images of which ``fraction`` rounds (as fraction_rows rounds) to one."""
    needed = max(1, math.floor(0.5 / fraction))
    while np.round(needed * fraction) < 1:
        needed += 1
    return needed


def _check_fractions(table: pd.DataFrame, manifest: pd.DataFrame, fractions, dataset: str) -> None:
    """Every training fraction must give each class at least one image of its own; fraction_rows
    would otherwise pad the class to one image, and the cell would not be at the fraction it reports."""
    train_counts = table[table.split == "train"].groupby("label").size()
    for fraction in sorted({float(f) for f in fractions}):
        short = train_counts[np.round(train_counts * fraction) < 1]
        if len(short):
            label, count = int(short.index[0]), int(short.iloc[0])
            more = f" (and {_plural(len(short) - 1, 'more class')})" if len(short) > 1 else ""
            raise DataError(
                f"{dataset}: class {_class_names(manifest)[label]!r} has {_plural(count, 'training image')}{more}; "
                f"at training fraction {fraction:g} that rounds to none, and each class needs at least "
                f"{_train_images_needed(fraction)} (add images or drop {fraction:g} from grid.fractions)"
            )


def make_split(
    manifest: pd.DataFrame, val: float, test: float, seed: int, fractions=None, name: str | None = None
) -> pd.DataFrame:
    """The split table: ``row`` (manifest row), ``label``, ``split``, ``rank``.

    Refuses with a one-line DataError a dataset whose results would mean nothing: fewer than two
    classes, a class without an image in train, val or test, or (given the grid's ``fractions``)
    a class that a training fraction leaves without an image of its own. ``name`` is the dataset's
    name for those messages.
    """
    if val + test >= 1:
        raise DataError(f"split.val + split.test must be below 1, got {val} + {test}")
    dataset = f"dataset {name!r}" if name else "dataset"
    manifest = manifest.reset_index(drop=True)
    _check_classes(manifest, dataset)
    split = assign_splits(manifest, val, test, seed)
    _check_every_class_in_every_split(manifest, split, val, test, dataset)
    table = pd.DataFrame(
        {"row": manifest.index, "label": manifest["label"], "split": split, "rank": train_ranks(manifest, split, seed)}
    )
    if fractions:
        _check_fractions(table, manifest, fractions, dataset)
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
