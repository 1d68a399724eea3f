"""Statistics over seeds: per-recipe confidence intervals and the group of recipes tied with the best.

A recipe is one value of every grid axis but the seed; its cells are its seeds. Recipes are chosen
on the validation metric only. Test metrics are summarised next to it for reporting and are never
used to choose: ``top_groups`` does not even read them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

SELECTION_METRIC = "val_acc"
CONFIDENCE = 0.95
ALPHA = 0.05
WITHIN = ("dataset", "fraction")  # a recipe is compared only with recipes of its dataset and fraction
# Paired differences closer than this to one another count as constant (see ``paired_p_value``).
CONSTANT_TOLERANCE = 1e-12

# Values of ``top_groups``' ``comparison`` column.
BEST = "best"
INDISTINGUISHABLE = "indistinguishable"
WORSE = "worse"
BETTER = "better"
UNTESTED = "untested"


def _check_cells(cells: pd.DataFrame, recipe_columns: Sequence[str], metrics: Sequence[str]) -> None:
    missing = [c for c in (*recipe_columns, "seed", *metrics) if c not in cells.columns]
    if missing:
        raise ValueError(f"the cell table lacks column(s) {', '.join(missing)}")
    if "seed" in recipe_columns:
        raise ValueError("seed is what a recipe is averaged over, not a recipe column")
    duplicated = cells.duplicated([*recipe_columns, "seed"])
    if duplicated.any():
        raise ValueError(f"{int(duplicated.sum())} cell(s) repeat a recipe and seed")


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """Mean, sample std (ddof=1) and the Student-t confidence interval of the mean of ``values``.

    half width = t_{(1+confidence)/2, n-1} · std / √n (``scipy.stats.t.ppf``). NaN values are left
    out. Fewer than two values give no interval: std, half width and bounds are NaN.
    """
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    std = half_width = float("nan")
    if n >= 2:
        std = float(values.std(ddof=1))
        half_width = float(stats.t.ppf((1 + confidence) / 2, n - 1) * std / np.sqrt(n))
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "half_width": half_width,
        "low": mean - half_width,
        "high": mean + half_width,
    }


def wilson_interval(accuracy, num_test, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The 95 % Wilson interval of an accuracy measured on ``num_test`` images: how far the accuracy
    on the population the test set was drawn from may lie, from the test set's size alone.

    The interval over seeds (``t_interval``) measures what training randomness moves; every seed is
    scored on the same test images, so it leaves this out, and a recipe that draws no random numbers
    has a width of zero there. Element-wise over arrays; the accuracy may be a mean over seeds."""
    accuracy, num_test = np.asarray(accuracy, dtype=float), np.asarray(num_test, dtype=float)
    low, high = proportion_confint(accuracy * num_test, num_test, alpha=1 - confidence, method="wilson")
    return np.asarray(low, dtype=float), np.asarray(high, dtype=float)


def recipe_statistics(
    cells: pd.DataFrame,
    recipe_columns: Sequence[str],
    selection_metric: str = SELECTION_METRIC,
    reported_metrics: Sequence[str] = ("test_top1",),
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """One row per recipe: seed count and, per metric, mean, std and a Student-t interval of the mean.

    ``cells``: one row per cell, with the ``recipe_columns`` (e.g. dataset, fraction, backbone,
    weights, strategy, head), ``seed``, the ``selection_metric`` (validation: the only metric a
    recipe may be chosen by) and the ``reported_metrics`` (test metrics: shown, never used to
    choose). Columns: the recipe columns; ``n`` (seeds); ``no_interval`` (True when n < 2: a single
    seed has no spread, so its interval is NaN); then for each metric ``m`` (selection metric
    first) ``m_mean``, ``m_std`` (ddof=1), ``m_ci_low``, ``m_ci_high`` and ``m_ci_half_width`` —
    the ``confidence`` interval t_{n-1} · std / √n around the mean. A metric missing (NaN) for
    some seeds is summarised over the seeds that have it.
    """
    recipe_columns = list(recipe_columns)
    metrics = [selection_metric, *(m for m in reported_metrics if m != selection_metric)]
    _check_cells(cells, recipe_columns, metrics)
    rows = []
    for recipe, group in cells.groupby(recipe_columns, sort=True, dropna=False):
        row = dict(zip(recipe_columns, recipe))
        row["n"] = int(group["seed"].nunique())
        row["no_interval"] = row["n"] < 2
        for metric in metrics:
            summary = t_interval(group[metric].to_numpy(dtype=float), confidence)
            row[f"{metric}_mean"] = summary["mean"]
            row[f"{metric}_std"] = summary["std"]
            row[f"{metric}_ci_low"] = summary["low"]
            row[f"{metric}_ci_high"] = summary["high"]
            row[f"{metric}_ci_half_width"] = summary["half_width"]
        rows.append(row)
    return pd.DataFrame(rows)


def paired_p_value(candidate: np.ndarray, best: np.ndarray) -> float:
    """Two-sided paired t-test p-value of ``candidate`` against ``best`` (same seeds, same order).

    ``scipy.stats.ttest_rel`` is undefined when every paired difference is the same (zero variance).
    That case is decided directly: all differences 0 means the two recipes gave identical results on
    every seed, indistinguishable (p = 1); one constant non-zero difference is a perfectly consistent
    gap, different (p = 0). Differences within ``CONSTANT_TOLERANCE`` of each other count as equal,
    so that float rounding of equal accuracies does not decide the test.
    """
    differences = np.asarray(candidate, dtype=float) - np.asarray(best, dtype=float)
    if np.ptp(differences) <= CONSTANT_TOLERANCE:
        return 1.0 if abs(differences.mean()) <= CONSTANT_TOLERANCE else 0.0
    return float(stats.ttest_rel(candidate, best).pvalue)


def _compare_family(family: pd.DataFrame, recipe_columns: list[str], metric: str, alpha: float) -> pd.DataFrame:
    """Compare every recipe of one (dataset, fraction) family with that family's best."""
    recipes, values = [], []  # per recipe: its key and its metric values indexed by seed
    for recipe, group in family.groupby(recipe_columns, sort=True, dropna=False):
        recipes.append(recipe)
        values.append(group.dropna(subset=[metric]).set_index("seed")[metric])
    table = pd.DataFrame(recipes, columns=recipe_columns)
    table["n"] = [len(v) for v in values]
    table[f"{metric}_mean"] = [v.mean() for v in values]
    # Highest mean wins; a tie goes to the first recipe in sorted order (stable sort), so the choice
    # is deterministic. A tied recipe is then tested against it like any other.
    order = table[f"{metric}_mean"].sort_values(ascending=False, kind="stable").index
    table, values = table.loc[order].reset_index(drop=True), [values[i] for i in order]
    best_values = values[0]

    common, p_values, differences = [], [], []
    for position, recipe_values in enumerate(values):
        seeds = recipe_values.index.intersection(best_values.index).sort_values()
        common.append(len(seeds))
        candidate, best = recipe_values.loc[seeds].to_numpy(), best_values.loc[seeds].to_numpy()
        differences.append(float(np.mean(candidate - best)) if len(seeds) else float("nan"))
        testable = position > 0 and len(seeds) >= 2
        p_values.append(paired_p_value(candidate, best) if testable else float("nan"))
    table["common_seeds"] = common
    table["mean_difference"] = differences  # candidate − best on the common seeds
    table["p_value"] = p_values

    tested = table["p_value"].notna().to_numpy()
    table["p_holm"] = np.nan
    reject = np.zeros(len(table), dtype=bool)
    if tested.any():
        reject_tested, p_holm, _, _ = multipletests(table.loc[tested, "p_value"], alpha=alpha, method="holm")
        table.loc[tested, "p_holm"] = p_holm
        reject[tested] = reject_tested

    comparison = np.where(tested, INDISTINGUISHABLE, UNTESTED).astype(object)
    comparison[reject & (table["mean_difference"].to_numpy() < 0)] = WORSE
    comparison[reject & (table["mean_difference"].to_numpy() > 0)] = BETTER
    comparison[0] = BEST
    table["comparison"] = comparison
    table["in_top_group"] = np.isin(comparison, [BEST, INDISTINGUISHABLE, BETTER])
    table["excluded"] = comparison == WORSE
    return table


def top_groups(
    cells: pd.DataFrame,
    recipe_columns: Sequence[str],
    selection_metric: str = SELECTION_METRIC,
    within: Sequence[str] = WITHIN,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Per (dataset, fraction): the best recipe by validation and the recipes not shown worse than it.

    Selection uses the validation ``selection_metric`` only; test metrics are not read here, so they
    cannot influence which recipes are recommended.

    Within each family (the ``within`` columns, which must be among the ``recipe_columns``), the
    best recipe has the highest mean validation metric over its seeds. Every other recipe is
    compared with it by a two-sided paired t-test on the seeds both have (``paired_p_value``);
    the family's p-values are Holm-corrected at ``alpha`` (``multipletests(method="holm")``).

    One row per recipe, families in sorted order and recipes by decreasing mean. Columns: the recipe
    columns; ``n`` (seeds with the metric); ``<metric>_mean``; ``common_seeds`` (shared with the
    best); ``mean_difference`` (recipe − best, on the common seeds); ``p_value`` and ``p_holm``
    (NaN for the best and untested recipes); ``comparison``:

    * ``"best"``: the family's best recipe;
    * ``"indistinguishable"``: not significantly different from the best after Holm correction;
    * ``"worse"``: significantly below the best;
    * ``"better"``: significantly above the best on their common seeds, which can only happen when
      the best has seeds this recipe lacks; not shown worse, so it stays in the top group;
    * ``"untested"``: fewer than two seeds in common with the best, so no paired test is possible;

    ``in_top_group`` (best, indistinguishable or better) and ``excluded`` (True only for
    ``"worse"``). An untested recipe is neither in the top group nor excluded: there is no
    evidence either way, which the report must say rather than read as a verdict.
    """
    recipe_columns = list(recipe_columns)
    within = list(within)
    if not set(within) <= set(recipe_columns):
        raise ValueError(f"the family columns {within} must be recipe columns")
    _check_cells(cells, recipe_columns, [selection_metric])
    families = [
        _compare_family(family, recipe_columns, selection_metric, alpha)
        for _, family in cells.groupby(within, sort=True, dropna=False)
    ]
    columns = [
        *recipe_columns,
        "n",
        f"{selection_metric}_mean",
        "common_seeds",
        "mean_difference",
        "p_value",
        "p_holm",
        "comparison",
        "in_top_group",
        "excluded",
    ]
    return pd.concat(families, ignore_index=True)[columns]
