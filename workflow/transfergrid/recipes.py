"""Recipes: the cells of the grid that differ only by seed, summarised with honest statistics.

``recipes.csv`` has one row per recipe: seeds, mean, standard deviation and a 95 % Student-t
interval of the validation accuracy (the selection metric) and of the test metrics (reported,
never used to choose), whether the recipe is in the top group of its dataset and fraction (the
recipes a paired t-test over common seeds, Holm-corrected at alpha 0.05, cannot tell apart from the
validation-best one; ``stats.top_groups``), the 95 % Wilson interval that the test set's size alone
puts around the mean test accuracy (``stats.wilson_interval``: the seeds share one test set, so
their interval leaves it out), the learning rates its seeds chose, and its cost.
``leaderboard.md`` is the same ranking as a Markdown table for a terminal or a pull request.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .aggregate import RECIPE
from .io import atomic_path, write_csv
from .stats import recipe_statistics, top_groups, wilson_interval

SELECTION = "val_acc"
REPORTED = ("test_top1", "test_macro_f1", "test_nll", "test_ece")


def _distinct_values(values: pd.Series) -> str:
    """The distinct values the seeds of a recipe chose, e.g. ``0.01 0.03``; empty when none
    applies (a closed-form head has no learning rate, a network head no C)."""
    return " ".join(f"{v:.3g}" for v in sorted(set(values.dropna())))


def recipe_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per recipe, ranked within each (dataset, fraction) by mean validation accuracy."""
    statistics = recipe_statistics(summary, RECIPE, SELECTION, REPORTED)
    groups = top_groups(summary, RECIPE, SELECTION)
    groups = groups.drop(columns=["n", f"{SELECTION}_mean"])
    extras = (
        summary.groupby(list(RECIPE), sort=True)
        .agg(
            pretrained=("pretrained", "first"),
            freeze_depth=("freeze_depth", "first"),
            image_size=("image_size", "first"),
            num_train=("num_train", "first"),
            num_test=("num_test", "first"),
            num_classes=("num_classes", "first"),
            trainable_params=("trainable_params", "median"),
            wall_seconds=("wall_seconds", "mean"),
            cost_seconds=("cost_seconds", "mean"),
            chosen_lrs=("lr", _distinct_values),
            lr_at_edge=("lr_at_edge", "any"),
            lr_candidates=("lr_candidates", "max"),
            chosen_C=("C", _distinct_values),
            C_at_edge=("C_at_edge", "any"),
        )
        .reset_index()
    )
    # What the recipe's seeds chose: their learning rates, or a closed-form head's C.
    setting = extras["chosen_lrs"].where(extras["chosen_lrs"] != "", "C=" + extras["chosen_C"])
    extras["chosen_setting"] = setting.where(setting != "C=", "")
    table = statistics.merge(groups, on=list(RECIPE)).merge(extras, on=list(RECIPE))
    table["images_per_class"] = table["num_train"] / table["num_classes"]
    table["test_top1_test_set_low"], table["test_top1_test_set_high"] = wilson_interval(
        table["test_top1_mean"], table["num_test"]
    )
    table = table.sort_values(["dataset", "fraction", f"{SELECTION}_mean"], ascending=[True, True, False])
    table["rank"] = table.groupby(["dataset", "fraction"]).cumcount() + 1
    return table.reset_index(drop=True)


def interval(mean: float, half_width: float, digits: int = 3) -> str:
    """``0.912 ± 0.014``, or ``0.912 (no interval)`` for a single seed."""
    if np.isnan(half_width):
        return f"{mean:.{digits}f} (no interval)"
    return f"{mean:.{digits}f} ± {half_width:.{digits}f}"


GROUP_LABELS = {
    "best": "best",
    "indistinguishable": "top group",
    "better": "top group",
    "worse": "worse",
    "untested": "untested (< 2 common seeds)",
}


def leaderboard_markdown(table: pd.DataFrame) -> str:
    """The ranking as Markdown: one table per dataset and fraction."""
    parts = [
        "# transfergrid leaderboard",
        "",
        "Ranked by mean validation accuracy over seeds (the selection metric); test accuracy is reported, "
        "never used to choose. ± is the half width of the 95 % Student-t interval of the mean. The top group "
        "holds the recipes a paired t-test over common seeds (Holm-corrected, alpha 0.05) cannot tell apart "
        "from the best.",
    ]
    for (dataset, fraction), family in table.groupby(["dataset", "fraction"], sort=True):
        rows = pd.DataFrame(
            {
                "rank": family["rank"],
                "backbone": family["backbone"],
                "weights": family["weights"],
                "strategy": family["strategy"],
                "head": family["head"],
                "seeds": family["n"],
                "val acc": [interval(m, h) for m, h in zip(family["val_acc_mean"], family["val_acc_ci_half_width"])],
                "test top-1": [
                    interval(m, h) for m, h in zip(family["test_top1_mean"], family["test_top1_ci_half_width"])
                ],
                "group": family["comparison"].map(GROUP_LABELS),
                "lr or C": family["chosen_setting"],
            }
        )
        parts += ["", f"## {dataset}, training fraction {fraction:g}", "", rows.to_markdown(index=False)]
    return "\n".join(parts) + "\n"


def write_recipes(summary: pd.DataFrame, recipes_csv: Path, leaderboard_md: Path) -> pd.DataFrame:
    table = recipe_table(summary)
    write_csv(table, recipes_csv)
    with atomic_path(leaderboard_md) as tmp:
        tmp.write_text(leaderboard_markdown(table))
    return table
