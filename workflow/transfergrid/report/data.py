"""What the report shows, as tables: pure functions of the run's outputs (summary.csv, recipes,
the cells' files), computed before anything is drawn. Every choice here (the best recipe, the
curves and cells shown) is made on validation; test numbers are shown, never used to choose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..aggregate import COORDINATES, RECIPE, SUMMARY_COLUMNS
from ..errors import TransferGridError
from ..naming import format_fraction

DEFAULT_FACETS = ("dataset", "fraction", "head")
FAMILY = ("dataset", "fraction")  # recipes compete within a dataset and training fraction


def load_summary(summary_csv: Path) -> pd.DataFrame:
    """The summary written by ``aggregate_cells``; names such as "none" or "NA" stay strings."""
    summary_csv = Path(summary_csv)
    if not summary_csv.is_file():
        raise TransferGridError(f"missing summary table: {summary_csv}")
    text_columns = [c for c in (*RECIPE, "cell_dir", "candidate_dir", "freeze_depth", "fit") if c != "fraction"]
    summary = pd.read_csv(summary_csv, keep_default_na=False, na_values=[""], dtype=dict.fromkeys(text_columns, str))
    missing = [column for column in SUMMARY_COLUMNS if column not in summary.columns]
    if missing:
        raise TransferGridError(f"{summary_csv} lacks column(s) {', '.join(missing)}")
    if summary.empty:
        raise TransferGridError(f"{summary_csv} holds no cells")
    summary["pretrained"] = summary["weights"] != "none"
    return summary.sort_values(list(COORDINATES), kind="stable", ignore_index=True)


def load_recipes(recipes_csv: Path) -> pd.DataFrame:
    text = (*RECIPE, "freeze_depth", "comparison", "chosen_lrs", "chosen_C", "chosen_setting")
    text_columns = [c for c in text if c != "fraction"]
    return pd.read_csv(recipes_csv, keep_default_na=False, na_values=[""], dtype=dict.fromkeys(text_columns, str))


def init_label(weights: str) -> str:
    return "scratch" if weights == "none" else f"pretrained ({weights})"


def axis_value(axis: str, value) -> str:
    return format_fraction(value) if axis == "fraction" else str(value)


def recipe_name(recipe, axes: list[str] | None = None) -> str:
    """A recipe as a short label, naming only the axes that vary (all when ``axes`` is None)."""
    axes = [a for a in RECIPE if a not in FAMILY] if axes is None else axes
    parts = []
    for axis in axes:
        value = recipe[axis]
        parts.append(init_label(value) if axis == "weights" else f"f={value:g}" if axis == "fraction" else str(value))
    return " · ".join(parts) or str(recipe["backbone"])


def varying_axes(table: pd.DataFrame, exclude=()) -> list[str]:
    """The recipe axes that take more than one value: the ones worth naming in a short label."""
    return [axis for axis in RECIPE if axis not in exclude and table[axis].nunique() > 1]


def winners(recipes: pd.DataFrame) -> pd.DataFrame:
    """The validation-best recipe of every dataset and fraction, with the names of its top group."""
    rows = []
    axes = varying_axes(recipes, exclude=FAMILY)
    for _family_key, family in recipes.groupby(list(FAMILY), sort=True):
        family = family.sort_values("val_acc_mean", ascending=False)
        best = family.iloc[0]
        tied = family[family["in_top_group"].astype(bool) & (family["comparison"] != "best")]
        untested = family[family["comparison"] == "untested"]
        rows.append(
            {
                **best.to_dict(),
                "name": recipe_name(best, axes),
                "tied": [recipe_name(r, axes) for _, r in tied.iterrows()],
                "untested": [recipe_name(r, axes) for _, r in untested.iterrows()],
                "recipes": len(family),
            }
        )
    return pd.DataFrame(rows)


def heatmap_tables(
    recipes: pd.DataFrame, facet_by=DEFAULT_FACETS, metric: str = "test_top1"
) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """Per facet: (title, mean, CI half width) of ``metric`` per (backbone · weights) x strategy.

    Axes that are neither a facet, a row nor a column are averaged over. All tables share the same
    row and column labels, so facets line up when compared.
    """
    facet_by = tuple(facet_by)
    unknown = [axis for axis in facet_by if axis not in recipes.columns]
    if unknown:
        raise TransferGridError(f"cannot facet heatmaps by {', '.join(unknown)}: not a recipe column")
    frame = recipes.assign(model=[f"{b} · {w}" for b, w in zip(recipes["backbone"], recipes["weights"])])
    rows, columns = sorted(frame["model"].unique()), sorted(frame["strategy"].unique())
    groups = frame.groupby(list(facet_by), sort=True, dropna=False) if facet_by else [((), frame)]
    tables = []
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        title = " · ".join(f"{axis}={axis_value(axis, value)}" for axis, value in zip(facet_by, key)) or "all"
        mean = part.pivot_table(index="model", columns="strategy", values=f"{metric}_mean", aggfunc="mean")
        half = part.pivot_table(index="model", columns="strategy", values=f"{metric}_ci_half_width", aggfunc="mean")
        tables.append((title, mean.reindex(index=rows, columns=columns), half.reindex(index=rows, columns=columns)))
    return tables


def size_curves(recipes: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per dataset, the recipes measured at more than one training fraction (the data-size axis)."""
    series = [a for a in RECIPE if a not in FAMILY]
    curves = {}
    for dataset, part in recipes.groupby("dataset", sort=True):
        if part["fraction"].nunique() > 1:
            counts = part.groupby(series)["fraction"].transform("nunique")
            curves[dataset] = part[counts > 1].sort_values([*series, "fraction"])
    return curves


def freeze_depth_curves(recipes: pd.DataFrame) -> pd.DataFrame:
    """Recipes of the ``freeze:k`` sweep (with full as depth 0) where the sweep has 2+ depths."""
    sweep = recipes[recipes["strategy"].str.startswith("freeze:") | (recipes["strategy"] == "full")].copy()
    sweep["depth"] = [0 if s == "full" else int(s.partition(":")[2]) for s in sweep["strategy"]]
    series = ["dataset", "fraction", "backbone", "weights", "head"]
    counts = sweep.groupby(series)["depth"].transform("nunique")
    has_freeze = sweep.groupby(series)["strategy"].transform(lambda s: s.str.startswith("freeze:").any())
    return sweep[(counts > 1) & has_freeze].sort_values([*series, "depth"])


def best_cells(summary: pd.DataFrame, recipes: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and fraction, the seed of the validation-best recipe with the best validation
    accuracy: the cell whose confusion matrix, reliability and predictions are shown."""
    rows = []
    for _, best in winners(recipes).iterrows():
        mask = np.logical_and.reduce([summary[axis] == best[axis] for axis in RECIPE])
        cells = summary[mask].sort_values(["val_acc", "seed"], ascending=[False, True])
        rows.append({**cells.iloc[0].to_dict(), "name": best["name"]})
    return pd.DataFrame(rows)


def curve_cells(summary: pd.DataFrame, recipes: pd.DataFrame, limit: int) -> pd.DataFrame:
    """The best recipes by validation rank (rank 1 of every dataset/fraction before rank 2), each
    with its lowest seed: the cells whose learning curves are drawn."""
    chosen = recipes.sort_values(["rank", *FAMILY], kind="stable").head(limit)
    rows = []
    for _, recipe in chosen.iterrows():
        mask = np.logical_and.reduce([summary[axis] == recipe[axis] for axis in RECIPE])
        rows.append(summary[mask].sort_values("seed").iloc[0])
    return pd.DataFrame(rows)


def read_history(candidate_dir: str) -> pd.DataFrame:
    path = Path(candidate_dir) / "history.csv"
    if not path.is_file():
        raise TransferGridError(f"missing cell output: {path}")
    history = pd.read_csv(path, keep_default_na=False, na_values=[""])
    missing = [c for c in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc") if c not in history]
    if missing:
        raise TransferGridError(f"{path} lacks column(s) {', '.join(missing)}")
    return history


def read_json_file(path: Path) -> dict:
    if not Path(path).is_file():
        raise TransferGridError(f"missing cell output: {path}")
    return json.loads(Path(path).read_text())


def read_confusion(cell_dir: str) -> pd.DataFrame:
    """The confusion matrix as true class (rows) x predicted class (columns)."""
    path = Path(cell_dir) / "confusion.csv"
    if not path.is_file():
        raise TransferGridError(f"missing cell output: {path}")
    confusion = pd.read_csv(path, keep_default_na=False, dtype={"true": str})
    if "true" not in confusion.columns:
        raise TransferGridError(f"{path} lacks its 'true' column")
    return confusion.set_index("true")


def read_predictions(cell_dir: str) -> pd.DataFrame:
    path = Path(cell_dir) / "predictions.csv"
    if not path.is_file():
        raise TransferGridError(f"missing cell output: {path}")
    return pd.read_csv(path)


def learning_rate_search(summary: pd.DataFrame) -> pd.DataFrame:
    """Every candidate of every cell that tried more than one learning rate: recipe, seed,
    multiplier, rate, validation accuracy and whether it was chosen."""
    rows = []
    for _, cell in summary[summary["lr_candidates"] > 1].iterrows():
        selection = read_json_file(Path(cell["cell_dir"]) / "selection.json")
        for candidate in selection["candidates"]:
            rows.append(
                {
                    **{axis: cell[axis] for axis in (*RECIPE, "seed")},
                    "lr_multiplier": candidate["lr_multiplier"],
                    "lr": candidate["lr"],
                    "val_acc": candidate["val_acc"],
                    "status": candidate["status"],
                    "chosen": candidate["candidate"] == selection["chosen"],
                }
            )
    return pd.DataFrame(rows)


def pareto_front(points: pd.DataFrame, cost: str, value: str) -> pd.DataFrame:
    """The points no other point beats on both lower ``cost`` and higher ``value``, by cost."""
    ordered = points.sort_values([cost, value], ascending=[True, False])
    front, best = [], -np.inf
    for index, row in ordered.iterrows():
        if row[value] > best:
            front.append(index)
            best = row[value]
    return ordered.loc[front]
