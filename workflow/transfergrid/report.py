"""The comparison report: one self-contained HTML file rendered from ``summary.csv``.

Every choice in the report (the ranking, the "best" cell, which curves to show) is made on the
validation split. Test metrics are shown next to it, never used to pick anything. The file holds
no timestamp and its PNGs carry no software metadata, so re-rendering the same inputs gives the
same bytes.
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, deterministic raster output

import numpy as np
import pandas as pd

from .aggregate import COORDINATES, RECIPE, SUMMARY_COLUMNS
from .errors import TransferGridError
from .io import atomic_path
from .naming import format_fraction
from .plots import figure_to_data_uri, plot_confusion, plot_curves, plot_heatmaps, plot_style

DEFAULT_FACETS = ("dataset", "fraction", "head")
RANK_WITHIN = ("dataset", "fraction")  # not choices a user makes, so recipes are ranked within them
MAX_CURVES = 12
METRICS = {  # summary column -> label, in table order
    "val_acc": "val acc",
    "test_top1": "test top-1",
    "test_balanced_accuracy": "test balanced acc",
    "test_macro_f1": "test macro-F1",
}
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
p.how { background: #f4f6f8; border-left: 4px solid #7a9cc6; padding: 0.5em 0.8em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.scratch td.init { color: #8a4b00; font-weight: 600; }
tr.pretrained td.init { color: #1d5e2c; font-weight: 600; }
tr.recommended { background: #eef7ee; }
img { max-width: 100%; }
code { font-size: 0.9em; }
"""


# ----------------------------------------------------------------------------------------------
# Data: everything here is a pure function of the summary table


def load_summary(summary_csv: Path) -> pd.DataFrame:
    """The summary written by ``aggregate_cells``; names such as "none" or "NA" stay strings."""
    summary_csv = Path(summary_csv)
    if not summary_csv.is_file():
        raise TransferGridError(f"missing summary table: {summary_csv}")
    text_columns = [*RECIPE, "cell_dir", "candidate_dir", "freeze_depth", "fit"]
    text_columns.remove("fraction")
    summary = pd.read_csv(summary_csv, keep_default_na=False, na_values=[""], dtype=dict.fromkeys(text_columns, str))
    missing = [column for column in SUMMARY_COLUMNS if column not in summary.columns]
    if missing:
        raise TransferGridError(f"{summary_csv} lacks column(s) {', '.join(missing)}")
    if summary.empty:
        raise TransferGridError(f"{summary_csv} holds no cells")
    summary["pretrained"] = summary["weights"] != "none"
    return summary.sort_values(list(COORDINATES), kind="stable", ignore_index=True)


def init_label(weights: str) -> str:
    return "scratch" if weights == "none" else f"pretrained ({weights})"


def axis_value(axis: str, value) -> str:
    return format_fraction(value) if axis == "fraction" else str(value)


def recipe_leaderboard(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per recipe (all coordinates but seed), ranked by mean validation accuracy.

    Recipes are ranked within each dataset and training fraction; ties share a rank and are then
    ordered by their coordinates. No test column takes part in the order.
    """
    aggregations = {
        "n_seeds": ("seed", "nunique"),
        "trainable_params": ("trainable_params", "max"),
        "wall_seconds": ("wall_seconds", "mean"),
        "first_seed": ("seed", "min"),
    }
    for metric in METRICS:
        aggregations[f"{metric}_mean"] = (metric, "mean")
        aggregations[f"{metric}_std"] = (metric, "std")
    board = summary.groupby(list(RECIPE), sort=True, dropna=False).agg(**aggregations).reset_index()
    board["init"] = board["weights"].map(init_label)
    board["rank"] = (
        board.groupby(list(RANK_WITHIN), dropna=False)["val_acc_mean"].rank(method="min", ascending=False).astype(int)
    )
    return board.sort_values([*RANK_WITHIN, "rank", *RECIPE], kind="stable", ignore_index=True)


def best_cells_by_val(summary: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, the single cell with the highest validation accuracy (ties: first by coordinates)."""
    ordered = summary.sort_values(
        ["val_acc", *COORDINATES], ascending=[False] + [True] * len(COORDINATES), kind="stable"
    )
    return ordered.groupby("dataset", sort=True).head(1).sort_values("dataset", ignore_index=True)


def model_label(backbone: str, weights: str) -> str:
    return f"{backbone} · {weights}"


def heatmap_tables(summary: pd.DataFrame, facet_by=DEFAULT_FACETS) -> list[tuple[str, pd.DataFrame]]:
    """Mean test top-1 per (backbone · weights) × strategy, one table per facet.

    Every axis that is neither a facet, a row nor a column (seed at least) is averaged over. All
    tables share the same row and column labels, so facets line up when compared.
    """
    facet_by = tuple(facet_by)
    unknown = [axis for axis in facet_by if axis not in summary.columns]
    if unknown:
        raise TransferGridError(f"cannot facet heatmaps by {', '.join(unknown)}: not a summary column")
    frame = summary.assign(model=[model_label(b, w) for b, w in zip(summary["backbone"], summary["weights"])])
    rows = sorted(frame["model"].unique())
    columns = sorted(frame["strategy"].unique())
    groups = frame.groupby(list(facet_by), sort=True, dropna=False) if facet_by else [((), frame)]
    tables = []
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        title = " · ".join(f"{axis}={axis_value(axis, value)}" for axis, value in zip(facet_by, key)) or "all cells"
        table = part.pivot_table(index="model", columns="strategy", values="test_top1", aggfunc="mean")
        tables.append((title, table.reindex(index=rows, columns=columns)))
    return tables


def varying_axes(summary: pd.DataFrame) -> list[str]:
    """The recipe axes that take more than one value: the ones worth naming in a short label."""
    return [axis for axis in RECIPE if summary[axis].nunique() > 1]


def short_recipe_label(recipe, axes: list[str]) -> str:
    parts = [init_label(recipe["weights"]) if axis == "weights" else axis_value(axis, recipe[axis]) for axis in axes]
    if axes and "fraction" in axes:
        parts[axes.index("fraction")] = f"f={format_fraction(recipe['fraction'])}"
    return " · ".join(parts) or str(recipe["backbone"])


def curve_recipes(board: pd.DataFrame, limit: int = MAX_CURVES) -> pd.DataFrame:
    """The best recipes by validation rank, taking rank 1 of every dataset/fraction before rank 2."""
    return board.sort_values(["rank", *RANK_WITHIN, *RECIPE], kind="stable").head(limit)


def first_seed_cell(summary: pd.DataFrame, recipe) -> pd.Series:
    """The recipe's cell with the lowest seed: the one whose curves are drawn."""
    mask = np.logical_and.reduce([summary[axis] == recipe[axis] for axis in RECIPE])
    return summary[mask].sort_values("seed").iloc[0]


def read_history(candidate_dir: str) -> pd.DataFrame:
    path = Path(candidate_dir) / "history.csv"
    if not path.is_file():
        raise TransferGridError(f"missing cell output: {path}")
    history = pd.read_csv(path, keep_default_na=False, na_values=[""])
    missing = [c for c in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc") if c not in history]
    if missing:
        raise TransferGridError(f"{path} lacks column(s) {', '.join(missing)}")
    return history


def read_confusion(cell_dir: str) -> pd.DataFrame:
    """The confusion matrix as true class (rows) × predicted class (columns), rows and columns aligned."""
    path = Path(cell_dir) / "confusion.csv"
    if not path.is_file():
        raise TransferGridError(f"missing cell output: {path}")
    confusion = pd.read_csv(path, keep_default_na=False, dtype={"true": str})
    if "true" not in confusion.columns:
        raise TransferGridError(f"{path} lacks its 'true' column")
    confusion = confusion.set_index("true")
    if set(confusion.columns) == set(confusion.index):
        confusion = confusion[list(confusion.index)]
    return confusion


# ----------------------------------------------------------------------------------------------
# HTML sections: strings from data go through html.escape, nothing else is escaped by hand


def esc(value) -> str:
    return html.escape(str(value))


def how_to_read(text: str) -> str:
    return f'<p class="how"><strong>How to read this.</strong> {text}</p>'


def image_tag(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{esc(alt)}">'


def mean_std(mean: float, std: float) -> str:
    return f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


def format_seconds(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


def value_list(summary: pd.DataFrame, axis: str) -> str:
    values = sorted(summary[axis].unique())
    return ", ".join(esc(axis_value(axis, value)) for value in values)


def section_header(summary: pd.DataFrame) -> str:
    names = {"weights": ("weight source", "weight sources"), "strategy": ("strategy", "strategies")}
    counts = [("cell", "cells", len(summary))] + [
        (*names.get(axis, (axis, f"{axis}s")), summary[axis].nunique())
        for axis in ("dataset", "fraction", "backbone", "weights", "strategy", "head", "seed")
    ]
    count_text = ", ".join(f"{n} {one if n == 1 else many}" for one, many, n in counts)
    rows = "".join(
        f"<tr><th>{esc(axis)}</th><td>{value_list(summary, axis)}</td></tr>"
        for axis in (*COORDINATES, "epochs", "image_size")
    )
    return (
        "<header><h1>Transfer-learning grid report</h1>"
        f"<p>This run holds {esc(count_text)}.</p>"
        f'<table id="grid">{rows}</table>'
        + how_to_read(
            "Each cell is one training run: one value of every axis above. A recipe is a "
            "cell without its seed; seeds measure how much a result moves by chance."
        )
        + "</header>"
    )


def leaderboard_row(recipe) -> str:
    classes = ["pretrained" if recipe["weights"] != "none" else "scratch"]
    if recipe["rank"] == 1:
        classes.append("recommended")
    cells = [
        f'<td class="num">{int(recipe["rank"])}</td>',
        *(f"<td>{esc(axis_value(axis, recipe[axis]))}</td>" for axis in ("dataset", "fraction", "backbone")),
        f'<td class="init">{esc(recipe["init"])}</td>',
        *(f"<td>{esc(recipe[axis])}</td>" for axis in ("strategy", "head")),
        f'<td class="num">{int(recipe["n_seeds"])}</td>',
        *(f'<td class="num">{mean_std(recipe[f"{m}_mean"], recipe[f"{m}_std"])}</td>' for m in METRICS),
        f'<td class="num">{int(recipe["trainable_params"]):,}</td>',
        f'<td class="num">{format_seconds(recipe["wall_seconds"])}</td>',
    ]
    return f'<tr class="{" ".join(classes)}">{"".join(cells)}</tr>'


def section_leaderboard(board: pd.DataFrame) -> str:
    headings = [
        "rank",
        "dataset",
        "fraction",
        "backbone",
        "init",
        "strategy",
        "head",
        "seeds",
        *(f"{label} (mean ± std)" for label in METRICS.values()),
        "trainable params",
        "wall time / run",
    ]
    head = "".join(f"<th>{esc(h)}</th>" for h in headings)
    body = "".join(leaderboard_row(recipe) for _, recipe in board.iterrows())
    return (
        '<section id="leaderboard"><h2>Leaderboard</h2>'
        "<p>Recipes are ranked by their mean <strong>validation</strong> accuracy, never by a test "
        "metric: the test split is only reported, so the recommended recipe (rank 1, shaded) is the one "
        "you would have picked without ever looking at it. Ranks restart for each dataset and training "
        "fraction.</p>"
        f'<table id="leaderboard-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        + how_to_read(
            "Each row is a recipe averaged over its seeds (mean ± standard deviation). "
            "The init column says whether the backbone started from pretrained weights or from "
            "scratch; a gap between validation and test accuracy larger than the spread over "
            "seeds hints that the validation split is small or unrepresentative."
        )
        + "</section>"
    )


def section_heatmaps(summary: pd.DataFrame, facet_by) -> str:
    tables = heatmap_tables(summary, facet_by)
    facets = ", ".join(facet_by) or "nothing"
    uri = figure_to_data_uri(plot_heatmaps(tables))
    return (
        '<section id="heatmaps"><h2>Mean test top-1 by model and strategy</h2>'
        + image_tag(uri, f"heatmaps of mean test top-1, one per {facets}")
        + how_to_read(
            f"One panel per combination of {esc(facets)}; rows are backbone · weights, so the "
            "same backbone pretrained and from scratch sit in neighbouring rows, and columns are "
            "fine-tuning strategies. All panels share one colour scale; blank squares were not run. "
            "These are test numbers for comparison only, not for choosing."
        )
        + "</section>"
    )


def section_curves(summary: pd.DataFrame, board: pd.DataFrame, limit: int) -> str:
    chosen = curve_recipes(board, limit)
    axes = varying_axes(summary)
    panels = []
    for _, recipe in chosen.iterrows():
        cell = first_seed_cell(summary, recipe)
        title = f"#{int(recipe['rank'])} {short_recipe_label(recipe, axes)} (seed {int(cell['seed'])})"
        panels.append((title, read_history(cell["candidate_dir"]), int(cell["best_epoch"])))
    uri = figure_to_data_uri(plot_curves(panels))
    shown = f"the {len(panels)} best recipes by validation rank" if len(panels) < len(board) else "every recipe"
    return (
        '<section id="curves"><h2>Training curves</h2>'
        f"<p>Curves of {esc(shown)}, each from its lowest seed.</p>"
        + image_tag(uri, "training and validation loss and accuracy per epoch")
        + how_to_read(
            "Solid lines are the training split, dashed lines validation; the red line marks the "
            "epoch whose weights were kept (best validation accuracy) and dotted grey lines mark "
            "a change of training phase. Train far above val means overfitting."
        )
        + "</section>"
    )


def best_cell_block(cell) -> str:
    confusion = read_confusion(cell["cell_dir"])
    title = " · ".join(axis_value(axis, cell[axis]) for axis in COORDINATES[:-1]) + f" · seed {int(cell['seed'])}"
    uri = figure_to_data_uri(plot_confusion(confusion, title))
    facts = [
        ("cell", f"<code>{esc(cell['cell_dir'])}</code>"),
        *((axis, esc(axis_value(axis, cell[axis]))) for axis in COORDINATES),
        ("init", esc(init_label(cell["weights"]))),
        ("best epoch", str(int(cell["best_epoch"]))),
        *((label, f"{cell[metric]:.4f}") for metric, label in METRICS.items()),
        ("training images", str(int(cell["num_train"]))),
    ]
    rows = "".join(f"<tr><th>{esc(name)}</th><td>{value}</td></tr>" for name, value in facts)
    return (
        f'<div class="best-cell"><h3>{esc(cell["dataset"])}</h3>'
        f'<table class="best-cell-facts">{rows}</table>'
        + image_tag(uri, f"confusion matrix of the best cell on {cell['dataset']}")
        + "</div>"
    )


def section_confusion(summary: pd.DataFrame) -> str:
    blocks = "".join(best_cell_block(cell) for _, cell in best_cells_by_val(summary).iterrows())
    return (
        '<section id="confusion"><h2>Best cell: confusion matrix</h2>'
        "<p>For each dataset, the single cell with the highest <strong>validation</strong> accuracy; "
        "its test metrics are shown as they came out.</p>"
        + blocks
        + how_to_read(
            "Rows are true classes, columns predicted classes; numbers are test-image counts and the "
            "colour is the share of each true class, so a perfect model is a dark diagonal. "
            "Off-diagonal squares show which classes are confused with which."
        )
        + "</section>"
    )


def render_html(summary: pd.DataFrame, facet_by=DEFAULT_FACETS, max_curves: int = MAX_CURVES) -> str:
    board = recipe_leaderboard(summary)
    with plot_style():
        sections = [
            section_header(summary),
            section_leaderboard(board),
            section_heatmaps(summary, facet_by),
            section_curves(summary, board, max_curves),
            section_confusion(summary),
        ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>transfergrid report</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def render_report(summary_csv: Path, out_html: Path, facet_by=DEFAULT_FACETS, max_curves: int = MAX_CURVES) -> None:
    """Render ``summary_csv`` (and the cells it points to) into one self-contained HTML file."""
    page = render_html(load_summary(summary_csv), tuple(facet_by), max_curves)
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
