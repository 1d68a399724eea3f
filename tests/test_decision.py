"""The decision layer: recipes with intervals and top groups, the size x similarity map's advice
next to the grid's winner, and `transfergrid recommend` before any training."""

import json

import pandas as pd
import pytest

from transfergrid.cli import main
from transfergrid.quadrant import map_points, place, verdict
from transfergrid.recipes import leaderboard_markdown, recipe_table

THRESHOLDS = {"size_threshold": 100, "similarity_threshold": 0.9}


def cells(scores: dict) -> pd.DataFrame:
    """A summary table: {(strategy, weights): [val per seed]} on one dataset and fraction."""
    rows = []
    for (strategy, weights), values in scores.items():
        for seed, value in enumerate(values):
            rows.append(
                {
                    "dataset": "d",
                    "fraction": 1.0,
                    "backbone": "net",
                    "weights": weights,
                    "strategy": strategy,
                    "head": "linear",
                    "seed": seed,
                    "val_acc": value,
                    "test_top1": value - 0.01,
                    "test_macro_f1": value - 0.02,
                    "test_nll": 0.5,
                    "test_ece": 0.05,
                    "pretrained": weights != "none",
                    "freeze_depth": "0",
                    "image_size": 32,
                    "num_train": 1500,
                    "num_test": 300,
                    "num_classes": 10,
                    "trainable_params": 1000,
                    "wall_seconds": 1.0,
                    "cost_seconds": 1.0,
                    "lr": 0.01,
                    "lr_at_edge": False,
                    "lr_candidates": 1,
                    "C": float("nan"),
                    "C_at_edge": False,
                }
            )
    return pd.DataFrame(rows)


def test_recipes_have_intervals_groups_and_a_single_seed_flag():
    summary = cells(
        {
            ("frozen", "imagenet_pkg"): [0.90, 0.91, 0.92],
            ("full", "imagenet_pkg"): [0.90, 0.905, 0.912],  # indistinguishable from the best
            ("scratch", "none"): [0.50, 0.52, 0.51],  # clearly worse
            ("freeze:2", "imagenet_pkg"): [0.80],  # one seed: no interval, untested
        }
    )
    table = recipe_table(summary)
    by = table.set_index("strategy")
    assert by.loc["frozen", "comparison"] == "best" and by.loc["frozen", "rank"] == 1
    assert by.loc["full", "in_top_group"] and not by.loc["scratch", "in_top_group"]
    assert by.loc["scratch", "comparison"] == "worse"
    assert by.loc["freeze:2", "no_interval"] and by.loc["freeze:2", "comparison"] == "untested"
    assert by.loc["frozen", "images_per_class"] == 150
    markdown = leaderboard_markdown(table)
    assert "0.910 ± 0.025" in markdown and "0.800 (no interval)" in markdown and "untested" in markdown


def test_a_closed_form_head_shows_the_C_it_chose_not_a_learning_rate():
    summary = cells({("frozen", "imagenet_pkg"): [0.90, 0.91], ("full", "imagenet_pkg"): [0.80, 0.81]})
    logreg = summary["strategy"] == "frozen"
    summary.loc[logreg, "head"] = "logreg"
    summary.loc[logreg, "lr"] = float("nan")
    summary.loc[logreg, "C"] = [0.1, 100.0]
    summary.loc[logreg, "C_at_edge"] = [False, True]
    summary.loc[~logreg, "lr"] = [0.03, 0.01]
    by = recipe_table(summary).set_index("head")
    assert by.loc["logreg", "chosen_setting"] == "C=0.1 100" and by.loc["logreg", "C_at_edge"]
    assert by.loc["linear", "chosen_setting"] == "0.01 0.03" and not by.loc["linear", "C_at_edge"]
    markdown = leaderboard_markdown(recipe_table(summary))
    assert "| lr or C " in markdown and "C=0.1 100" in markdown and "nan" not in markdown


def test_the_four_quadrants_and_their_boundaries():
    assert place(100, 0.9, **THRESHOLDS).name == "large + similar"
    assert place(99, 0.9, **THRESHOLDS).advice == "freeze the base, train a new classifier"
    assert place(100, 0.89, **THRESHOLDS).strategies == ("full", "scratch")
    assert place(10, 0.5, **THRESHOLDS).name == "small + different"


@pytest.mark.parametrize(
    "scores, agreement",
    [
        ({("frozen", "imagenet_pkg"): [0.9, 0.91, 0.92], ("full", "imagenet_pkg"): [0.5, 0.51, 0.52]}, "agrees"),
        (
            {("full", "imagenet_pkg"): [0.92, 0.93, 0.925], ("frozen", "imagenet_pkg"): [0.915, 0.935, 0.92]},
            "agrees within the top group",
        ),
        ({("full", "imagenet_pkg"): [0.9, 0.91, 0.92], ("frozen", "imagenet_pkg"): [0.5, 0.51, 0.52]}, "disagrees"),
        ({("full", "imagenet_pkg"): [0.9, 0.91, 0.92]}, "untested"),
    ],
)
def test_the_maps_advice_is_checked_against_the_grids_winner(scores, agreement):
    recipes = recipe_table(cells(scores))
    small_similar = place(10, 0.95, **THRESHOLDS)  # advice: frozen
    _winner, found, sentence = verdict(small_similar, recipes)
    assert found == agreement and sentence


def test_map_points_place_every_dataset_fraction_and_source():
    recipes = recipe_table(cells({("frozen", "imagenet_pkg"): [0.9, 0.91], ("full", "imagenet_pkg"): [0.8, 0.81]}))
    similarities = pd.DataFrame(
        [{"dataset": "d", "backbone": "net", "weights": "imagenet_pkg", "separability": 0.95, "std": 0.01}]
    )
    (point,) = map_points(recipes, similarities, THRESHOLDS).to_dict("records")
    assert point["quadrant"] == "large + similar" and point["winner"] == "frozen / linear"
    assert point["agreement"] == "disagrees" or point["agreement"].startswith("agrees")
    assert point["similarity_low"] == pytest.approx(0.95 - 1.96 * 0.01)


def test_recommend_needs_only_the_size_and_the_similarity(tmp_path, monkeypatch, capsys):
    (tmp_path / "results/similarity/d/net").mkdir(parents=True)
    (tmp_path / "results/similarity/d/net/imagenet_pkg.json").write_text(
        json.dumps({"weights": "imagenet_pkg", "separability": 0.95, "std": 0.01})
    )
    (tmp_path / "results/datasets/d").mkdir(parents=True)
    pd.DataFrame({"row": range(40), "label": [0, 1] * 20, "split": ["train"] * 30 + ["val"] * 10}).to_csv(
        tmp_path / "results/datasets/d/split.csv", index=False
    )
    (tmp_path / "config.yaml").write_text("grid: {fractions: [0.2, 1.0]}\nreport: {quadrant: {size_threshold: 10}}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["recommend", "--dataset", "d"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("d f=0.2 (net · imagenet_pkg): 3 training images per class, similarity 0.950")
    assert lines[0].endswith("small + similar: freeze the base, train a new classifier (strategies: frozen)")
    assert "large + similar" in lines[1]
    assert main(["recommend", "--dataset", "other"]) == 1
    assert "no similarity measured for dataset 'other'" in capsys.readouterr().err
