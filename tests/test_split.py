"""Split stratification, nesting of training fractions, pre-split sources."""

import numpy as np
import pandas as pd
import pytest

from transfergrid.errors import DataError
from transfergrid.split import fraction_rows, make_split, split_rows


def manifest(counts, split=""):
    labels = np.repeat(np.arange(len(counts)), counts)
    return pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(len(labels))],
            "label": labels,
            "class_name": labels.astype(str),
            "split": split,
        }
    )


def test_split_is_stratified_and_disjoint():
    table = make_split(manifest([100, 60, 40]), val=0.2, test=0.1, seed=3)
    for label, size in enumerate([100, 60, 40]):
        rows = table[table.label == label]
        assert (rows.split == "val").sum() == round(size * 0.2)
        assert (rows.split == "test").sum() == round(size * 0.1)
    assert set(table.split) == {"train", "val", "test"}
    assert len(set(split_rows(table, "train")) & set(split_rows(table, "test"))) == 0


def test_split_is_seeded():
    a = make_split(manifest([30, 30]), 0.2, 0.2, seed=1)
    b = make_split(manifest([30, 30]), 0.2, 0.2, seed=1)
    c = make_split(manifest([30, 30]), 0.2, 0.2, seed=2)
    assert a.equals(b)
    assert not a.split.equals(c.split)


def test_fractions_are_nested_stratified_subsets_of_train():
    table = make_split(manifest([200, 100, 50]), 0.15, 0.15, seed=0)
    subsets = {f: set(fraction_rows(table, f)) for f in (0.1, 0.25, 0.5, 1.0)}
    assert subsets[0.1] < subsets[0.25] < subsets[0.5] < subsets[1.0]
    assert subsets[1.0] == set(split_rows(table, "train"))
    train = table[table.split == "train"].groupby("label").size()
    chosen = table.loc[table.row.isin(subsets[0.25])].groupby("label").size()
    assert (chosen == np.maximum(1, np.round(train * 0.25))).all()


def test_tiny_fraction_keeps_one_image_per_class():
    table = make_split(manifest([20, 20, 20]), 0.2, 0.2, seed=0)
    assert table.loc[table.row.isin(fraction_rows(table, 0.001)), "label"].value_counts().to_dict() == {
        0: 1,
        1: 1,
        2: 1,
    }


def test_presplit_train_test_carves_only_val_from_train():
    data = manifest([50, 50])
    data["split"] = ["test" if i % 5 == 0 else "train" for i in range(100)]
    table = make_split(data, val=0.2, test=0.3, seed=0)
    assert (table.split == "test").sum() == 20  # untouched: the source's own test split
    assert ((table.split == "val") & (data.split == "test")).sum() == 0
    assert (table.split == "val").sum() == 16


def test_presplit_with_all_three_splits_is_kept_as_is():
    data = manifest([10, 10])
    data["split"] = (["train"] * 6 + ["val"] * 2 + ["test"] * 2) * 2
    assert make_split(data, 0.5, 0.4, seed=0).split.tolist() == data.split.tolist()


def test_impossible_ratios_are_a_clear_error():
    with pytest.raises(DataError, match=r"split\.val"):
        make_split(manifest([10]), 0.6, 0.5, seed=0)


# --------------------------------------------------------------------------- degenerate datasets


def named(layout: dict[str, dict[str, int] | int]) -> pd.DataFrame:
    """A manifest from ``{class: count}`` or, pre-split, ``{class: {split: count}}``; labels follow the order."""
    rows = []
    for label, (class_name, counts) in enumerate(layout.items()):
        for split, count in (counts if isinstance(counts, dict) else {"": counts}).items():
            rows += [(f"{class_name}/{split}{i}.png", label, class_name, split) for i in range(count)]
    return pd.DataFrame(rows, columns=["path", "label", "class_name", "split"])


NEEDS_THREE = "a 0.15/0.15 val/test split needs at least 3 per class (1 val, 1 test, 1 train)"

# name -> (manifest, fractions, the exact error line)
DEGENERATE = {
    "one class": (
        named({"cat": 40}),
        None,
        "dataset 'pets' has 1 class ('cat'); a classifier needs at least 2 "
        "(with one, top-1 accuracy and macro-F1 are 1.0 whatever it learns)",
    ),
    "two images per class": (
        named({"cat": 2, "dog": 2}),
        None,
        f"dataset 'pets': class 'cat' has 2 images; {NEEDS_THREE} (and 1 more class); the val split is empty",
    ),
    "one small class": (named({"cat": 2, "dog": 30}), None, f"dataset 'pets': class 'cat' has 2 images; {NEEDS_THREE}"),
    "one image": (named({"cat": 30, "dog": 1}), None, f"dataset 'pets': class 'dog' has 1 image; {NEEDS_THREE}"),
    "pre-split train/test, val carved": (
        named({"cat": {"train": 1, "test": 1}, "dog": {"train": 10, "test": 3}}),
        None,
        "dataset 'pets': class 'cat' has 1 image in the source's train split; "
        "carving a 0.15 val split out of it needs at least 2 per class (1 val, 1 train)",
    ),
    "pre-split train/val, test carved": (
        named({"cat": {"train": 10, "val": 3}, "dog": {"train": 1, "val": 1}}),
        None,
        "dataset 'pets': class 'dog' has 1 image in the source's train split; "
        "carving a 0.15 test split out of it needs at least 2 per class (1 test, 1 train)",
    ),
    "pre-split class missing from val": (
        named({"cat": {"train": 3, "test": 1}, "dog": {"train": 3, "val": 1, "test": 1}}),
        None,
        "dataset 'pets': class 'cat' has no image in the source's val split (train 3, val 0, test 1); "
        "every class needs one in each split",
    ),
    "fraction leaves a class without images": (
        named({"cat": 10, "dog": 40}),
        [1.0, 0.25, 0.05],
        "dataset 'pets': class 'cat' has 6 training images; at training fraction 0.05 that rounds to none, "
        "and each class needs at least 11 (add images or drop 0.05 from grid.fractions)",
    ),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_dataset_is_refused_at_the_split(case):
    data, fractions, expected = DEGENERATE[case]
    with pytest.raises(DataError) as info:
        make_split(data, 0.15, 0.15, seed=0, fractions=fractions, name="pets")
    assert str(info.value) == expected


def test_smallest_splittable_dataset_passes_with_one_image_per_split():
    table = make_split(named({"cat": 3, "dog": 3}), 0.15, 0.15, seed=0, fractions=[1.0], name="pets")
    assert table.groupby(["label", "split"]).size().tolist() == [1, 1, 1, 1, 1, 1]


def test_fractions_that_give_every_class_an_image_pass():
    table = make_split(named({"cat": 10, "dog": 40}), 0.15, 0.15, seed=0, fractions=[1.0, 0.25, 0.1], name="pets")
    assert {label: len(rows) for label, rows in table[table.split == "train"].groupby("label")} == {0: 6, 1: 28}
    assert table.loc[table.row.isin(fraction_rows(table, 0.1)), "label"].value_counts().to_dict() == {0: 1, 1: 3}
