"""Statistics over seeds on constructed cell tables whose answers are known."""

import numpy as np
import pandas as pd
import pytest

from transfergrid.stats import paired_p_value, recipe_statistics, t_interval, top_groups, wilson_interval

RECIPE = ["dataset", "fraction", "backbone", "weights", "strategy", "head"]
SEEDS = [0, 1, 2, 3, 4]
BASE = np.array([0.80, 0.82, 0.81, 0.83, 0.79])  # the best recipe's validation accuracy per seed
NOISE = np.array([0.01, -0.01, 0.02, -0.02, 0.0])  # mean 0, std 0.0158: paired noise around a gap


def cells_of(recipes: dict, dataset="digits", fraction=1.0, seeds=SEEDS) -> pd.DataFrame:
    """Cell table from ``{backbone: val_acc per seed}`` (other recipe axes fixed); a value may be a
    ``{seed: val_acc}`` dict for recipes with their own seeds. test_top1 is val_acc − 0.01."""
    rows = []
    for backbone, values in recipes.items():
        per_seed = values if isinstance(values, dict) else dict(zip(seeds, values))
        for seed, value in per_seed.items():
            rows.append(
                {
                    "dataset": dataset,
                    "fraction": fraction,
                    "backbone": backbone,
                    "weights": "imagenet",
                    "strategy": "full",
                    "head": "linear",
                    "seed": seed,
                    "val_acc": float(value),
                    "test_top1": float(value) - 0.01,
                }
            )
    return pd.DataFrame(rows)


def by_backbone(table: pd.DataFrame) -> pd.DataFrame:
    return table.set_index("backbone")


def test_t_interval_textbook_case():
    summary = t_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert summary["mean"] == pytest.approx(3.0)
    assert summary["std"] == pytest.approx(1.5811, abs=1e-4)  # sqrt(2.5), ddof=1
    # t_{0.975, 4} = 2.7764 (any t table): 2.7764 · 1.5811 / √5 = 1.9632
    assert summary["half_width"] == pytest.approx(1.9632, abs=1e-4)
    assert summary["low"] == pytest.approx(3 - 1.9632, abs=1e-4)
    assert summary["high"] == pytest.approx(3 + 1.9632, abs=1e-4)


def test_wilson_interval_textbook_cases_are_never_empty():
    low, high = wilson_interval([0.5, 0.0, 1.0], [100, 20, 20])
    # Wilson, z = 1.96: 50 of 100 -> 0.4038-0.5962; 0 of 20 -> 0-0.1611 (z²/(n+z²)), 20 of 20 mirrors it.
    assert low == pytest.approx([0.4038, 0.0, 0.8389], abs=1e-4)
    assert high == pytest.approx([0.5962, 0.1611, 1.0], abs=1e-4)


def test_recipe_statistics_columns_and_single_seed_flag():
    cells = cells_of({"resnet18": [1, 2, 3, 4, 5], "vit": {0: 0.7}})
    table = by_backbone(recipe_statistics(cells, RECIPE, reported_metrics=["test_top1"]))
    several, single = table.loc["resnet18"], table.loc["vit"]
    assert several["n"] == 5 and not several["no_interval"]
    assert several["val_acc_mean"] == pytest.approx(3.0)
    assert several["val_acc_ci_half_width"] == pytest.approx(1.9632, abs=1e-4)
    assert several["test_top1_mean"] == pytest.approx(2.99)
    assert several["test_top1_ci_half_width"] == pytest.approx(1.9632, abs=1e-4)  # a shift keeps the width
    assert single["n"] == 1 and single["no_interval"]
    assert single["val_acc_mean"] == pytest.approx(0.7)
    assert np.isnan(single["val_acc_std"]) and np.isnan(single["val_acc_ci_low"])
    assert np.isnan(single["test_top1_ci_high"])


def test_recipe_statistics_rejects_repeated_seed():
    cells = cells_of({"resnet18": [0.8, 0.9]})
    with pytest.raises(ValueError, match="repeat"):
        recipe_statistics(pd.concat([cells, cells.iloc[:1]]), RECIPE)


def test_top_group_keeps_close_recipes_and_drops_clearly_worse():
    cells = cells_of(
        {
            "best": BASE,
            "close": BASE + np.array([0.004, -0.006, 0.005, -0.004, 0.0]),  # mean gap −0.0002, noisy
            "far": BASE - 0.10 + NOISE / 5,
            "other_seeds": {5: 0.6, 6: 0.65, 0: 0.62},  # one seed shared with the best: untested
        }
    )
    table = by_backbone(top_groups(cells, RECIPE))
    assert table.loc["best", "comparison"] == "best" and table.loc["best", "in_top_group"]
    assert np.isnan(table.loc["best", "p_value"])
    assert table.loc["close", "comparison"] == "indistinguishable" and table.loc["close", "in_top_group"]
    assert table.loc["close", "p_holm"] > 0.5
    assert table.loc["far", "comparison"] == "worse"
    assert not table.loc["far", "in_top_group"] and table.loc["far", "excluded"]
    assert table.loc["far", "p_holm"] < 1e-4
    untested = table.loc["other_seeds"]
    assert untested["comparison"] == "untested" and untested["common_seeds"] == 1
    assert not untested["in_top_group"] and not untested["excluded"]
    assert np.isnan(untested["p_value"]) and np.isnan(untested["p_holm"])


def test_better_on_common_seeds_stays_in_top_group():
    # The best owes its mean to seeds 3 and 4, which the other recipe lacks; on the three shared
    # seeds the other recipe is consistently higher.
    cells = cells_of({"best": [0.70, 0.71, 0.72, 0.95, 0.96], "partial": {0: 0.75, 1: 0.77, 2: 0.765}})
    table = by_backbone(top_groups(cells, RECIPE))
    partial = table.loc["partial"]
    assert table.loc["best", "comparison"] == "best"
    assert partial["comparison"] == "better" and partial["p_holm"] < 0.05
    assert partial["common_seeds"] == 3 and partial["mean_difference"] == pytest.approx(0.155 / 3)
    assert partial["in_top_group"] and not partial["excluded"]


def test_best_is_highest_mean_validation_not_test():
    # "b" has the higher test accuracy but the lower validation accuracy: validation decides.
    cells = cells_of({"a": BASE, "b": BASE - 0.05 + NOISE})
    cells.loc[cells["backbone"] == "b", "test_top1"] = 0.99
    table = by_backbone(top_groups(cells, RECIPE))
    assert table.loc["a", "comparison"] == "best"
    assert list(top_groups(cells.drop(columns="test_top1"), RECIPE)["comparison"]) == ["best", "worse"]


def test_holm_correction_changes_a_decision():
    # Two recipes whose paired p-values against the best are 0.040 and 0.047: each below 0.05 on its
    # own, but Holm multiplies the smaller by 2 (0.080) and then stops, so neither is rejected.
    cells = cells_of({"best": BASE, "gap_0212": BASE - 0.0212 + NOISE, "gap_0200": BASE - 0.0200 + NOISE})
    table = by_backbone(top_groups(cells, RECIPE))
    assert table.loc["gap_0212", "p_value"] == pytest.approx(0.0400, abs=5e-4)
    assert table.loc["gap_0200", "p_value"] == pytest.approx(0.0474, abs=5e-4)
    assert (table[["p_value"]].dropna() < 0.05).all().all()  # uncorrected, both would be "worse"
    assert table.loc["gap_0212", "p_holm"] == pytest.approx(0.0800, abs=1e-3)
    assert table.loc["gap_0200", "p_holm"] == pytest.approx(0.0800, abs=1e-3)  # step-down keeps it monotone
    assert set(table["comparison"]) == {"best", "indistinguishable"}
    # With only one of them in the family there is nothing to correct for: it is "worse".
    alone = by_backbone(top_groups(cells[cells["backbone"] != "gap_0200"], RECIPE))
    assert alone.loc["gap_0212", "comparison"] == "worse"


def test_zero_variance_differences():
    cells = cells_of({"best": BASE, "identical": BASE, "constant_gap": BASE - 0.01})
    table = by_backbone(top_groups(cells, RECIPE))
    # A tie in mean goes to the first recipe in sorted order; the other is then tested against it.
    assert table.loc["best", "comparison"] == "best"
    assert table.loc["identical", "p_value"] == 1.0 and table.loc["identical", "comparison"] == "indistinguishable"
    assert table.loc["constant_gap", "p_value"] == 0.0 and table.loc["constant_gap", "comparison"] == "worse"
    assert paired_p_value(np.array([0.5, 0.6]), np.array([0.5, 0.6])) == 1.0
    assert paired_p_value(np.array([0.4, 0.5]), np.array([0.5, 0.6])) == 0.0


def test_families_are_separate_and_single_seed_best_leaves_others_untested():
    digits = cells_of({"a": BASE, "b": BASE - 0.2 + NOISE})
    small = cells_of({"a": {0: 0.9}, "b": BASE - 0.3}, fraction=0.1)
    table = top_groups(pd.concat([digits, small]), RECIPE)
    full = by_backbone(table[table["fraction"] == 1.0])
    tenth = by_backbone(table[table["fraction"] == 0.1])
    assert full.loc["a", "comparison"] == "best" and full.loc["b", "comparison"] == "worse"
    assert tenth.loc["a", "comparison"] == "best" and tenth.loc["a", "n"] == 1
    assert tenth.loc["b", "comparison"] == "untested" and tenth.loc["b", "common_seeds"] == 1
    assert list(table.columns[-9:]) == [
        "n",
        "val_acc_mean",
        "common_seeds",
        "mean_difference",
        "p_value",
        "p_holm",
        "comparison",
        "in_top_group",
        "excluded",
    ]
