"""The report a practitioner reads: one self-contained HTML file (figures as PNG data URIs, no
network access), rendered from a Jinja2 template.

In order: a summary (the best recipe per dataset and fraction, its interval and top group, the
size x similarity map's advice next to the grid's winner); the sortable leaderboard; heatmaps
(backbone x strategy per head, mean ± CI half width); accuracy against the training-set size;
freeze-depth curves; learning curves; confusion matrices and reliability diagrams; predictions of
test images and the most confidently wrong ones; the size x similarity map; the learning-rate
search; cost against accuracy with the Pareto front. Every choice is made on validation; test
numbers are shown, never used to choose. The file holds no timestamp and its PNGs no software
metadata: re-rendering the same inputs gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from ..io import atomic_path
from ..naming import image_cache_path
from ..quadrant import map_points
from . import data, figures
from .rendering import Plot, render_figures

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class ReportSettings:
    facet_by: tuple[str, ...] = data.DEFAULT_FACETS
    max_curves: int = 12
    thresholds: dict = field(default_factory=lambda: {"size_threshold": 100, "similarity_threshold": 0.9})
    predictions_shown: int = 12
    wrong_shown: int = 6
    processes: int = 1  # figures rendered at a time (rendering.render_figures)


def interval(mean: float, half_width: float, digits: int = 3) -> str:
    if pd.isna(mean):
        return "–"
    if pd.isna(half_width):
        return f"{mean:.{digits}f} (no interval)"
    return f"{mean:.{digits}f} ± {half_width:.{digits}f}"


def load_similarities(paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in map(Path, paths):
        measured = data.read_json_file(path)
        dataset = path.parent.parent.name
        rows.append({"dataset": dataset, "backbone": path.parent.name, **measured})
    columns = ["dataset", "backbone", "weights", "separability", "ci_low", "ci_high", "std", "method"]
    return pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(columns=columns)


def best_cell_title(cell) -> str:
    """How the report names one of the best cells (a row of ``data.best_cells``)."""
    return f"{cell['dataset']} f={cell['fraction']:g} · {cell['name']} · seed {cell['seed']}"


def prediction_panels(best: pd.DataFrame, settings: ReportSettings) -> list[tuple[str, Plot]]:
    """Per best cell: a sample of its test predictions and its most confidently wrong ones, with
    the images from the image cache the cell was evaluated on, as (title, function drawing it)."""
    panels = []
    for _, cell in best.iterrows():
        predictions = data.read_predictions(cell["cell_dir"])
        classes = [c[len("p_") :] for c in predictions.columns if c.startswith("p_")]
        probabilities = predictions[[f"p_{c}" for c in classes]].to_numpy()
        predictions["confidence"] = probabilities.max(axis=1)
        cache_path = Path(image_cache_path(cell["dataset"], int(cell["image_size"])))
        if not cache_path.is_file():
            continue
        images = np.load(cache_path, mmap_mode="r")
        sample = predictions.sample(min(settings.predictions_shown, len(predictions)), random_state=0)
        wrong = predictions[predictions["label"] != predictions["pred"]]
        wrong = wrong.sort_values("confidence", ascending=False).head(settings.wrong_shown)
        for title, rows in (("test predictions", sample), ("most confidently wrong", wrong)):
            if rows.empty:
                continue
            plot = partial(
                figures.plot_predictions,
                np.stack([images[int(i)] for i in rows["index"]]),
                [classes[int(i)] for i in rows["label"]],
                [classes[int(i)] for i in rows["pred"]],
                rows["confidence"].to_numpy(),
                f"{best_cell_title(cell)}: {title}",
            )
            panels.append((title, plot))
    return panels


def build_context(summary: pd.DataFrame, recipes: pd.DataFrame, similarities: pd.DataFrame, settings: ReportSettings):
    """Everything the template shows, figures rendered."""
    label_axes = data.varying_axes(recipes)

    def label_of(row) -> str:
        return data.recipe_name(row, label_axes)

    def label_without(*axes):
        kept = [axis for axis in label_axes if axis not in axes]
        return lambda row: data.recipe_name(row, kept)

    winners = data.winners(recipes)
    points = map_points(recipes, similarities, settings.thresholds) if not similarities.empty else pd.DataFrame()
    best = data.best_cells(summary, recipes)
    context = {
        "counts": {
            "cells": len(summary),
            "recipes": len(recipes),
            "datasets": sorted(summary["dataset"].unique()),
            "fractions": sorted(summary["fraction"].unique()),
            "seeds": sorted(summary["seed"].unique()),
            "backbones": sorted(summary["backbone"].unique()),
            "strategies": sorted(summary["strategy"].unique()),
            "heads": sorted(summary["head"].unique()),
        },
        "winners": [
            {
                **row,
                "val": interval(row["val_acc_mean"], row["val_acc_ci_half_width"]),
                "test": interval(row["test_top1_mean"], row["test_top1_ci_half_width"]),
                "map": points[(points["dataset"] == row["dataset"]) & (points["fraction"] == row["fraction"])].to_dict(
                    "records"
                )
                if not points.empty
                else [],
            }
            for row in winners.to_dict("records")
        ],
        "leaderboard": [
            {
                **row,
                "val": interval(row["val_acc_mean"], row["val_acc_ci_half_width"]),
                "test": interval(row["test_top1_mean"], row["test_top1_ci_half_width"]),
                "init": data.init_label(row["weights"]),
            }
            for row in recipes.sort_values(["dataset", "fraction", "rank"]).to_dict("records")
        ],
        "thresholds": settings.thresholds,
        "similarities": similarities.to_dict("records"),
        "points": points.to_dict("records") if not points.empty else [],
    }
    # Every figure as a function that draws it, keyed (kind, name or index), rendered together
    # (several processes at a time).
    plots = {("figures", "heatmaps"): partial(figures.plot_heatmaps, data.heatmap_tables(recipes, settings.facet_by))}
    curves = data.size_curves(recipes)
    if curves:
        plots["figures", "size"] = partial(figures.plot_size_curves, curves, label_without("dataset", "fraction"))
    sweep = data.freeze_depth_curves(recipes)
    if not sweep.empty:
        plots["figures", "freeze"] = partial(figures.plot_freeze_depth, sweep, label_without("strategy"))
    panels = [
        (label_of(cell), data.read_history(cell["candidate_dir"]), int(cell["best_epoch"]))
        for _, cell in data.curve_cells(summary, recipes, settings.max_curves).iterrows()
    ]
    plots["figures", "curves"] = partial(figures.plot_curves, panels)
    best_cells, reliability = [], []
    for i, (_, cell) in enumerate(best.iterrows()):
        best_cells.append({"title": best_cell_title(cell)})
        plots["confusion", i] = partial(figures.plot_confusion, data.read_confusion(cell["cell_dir"]), cell["name"])
        test_metrics = data.read_json_file(Path(cell["cell_dir"]) / "test.json")
        reliability.append((f"{cell['dataset']} f={cell['fraction']:g}", test_metrics))
    plots["figures", "reliability"] = partial(figures.plot_reliability, reliability)
    predictions = prediction_panels(best, settings)
    plots.update({("predictions", i): plot for i, (_, plot) in enumerate(predictions)})
    if not points.empty:
        plots["figures", "map"] = partial(figures.plot_quadrant_map, points, settings.thresholds, map_label)
    search = data.learning_rate_search(summary)
    if not search.empty:
        plots["figures", "lr"] = partial(figures.plot_learning_rates, search, label_of)
    context["lr_edges"] = [label_of(r) for r in recipes[recipes["lr_at_edge"].astype(bool)].to_dict("records")]
    context["lr_searched"] = bool(not search.empty)
    context["C_edges"] = [label_of(r) for r in recipes[recipes["C_at_edge"].astype(bool)].to_dict("records")]
    plots["figures", "cost"] = partial(
        figures.plot_cost,
        recipes,
        data.pareto_front(recipes, "cost_seconds", "val_acc_mean"),
        data.pareto_front(recipes, "trainable_params", "val_acc_mean"),
        label_of,
    )
    uris = render_figures(plots, settings.processes)
    context["figures"] = {name: uri for (kind, name), uri in uris.items() if kind == "figures"}
    context["best_cells"] = [{**cell, "confusion": uris["confusion", i]} for i, cell in enumerate(best_cells)]
    context["predictions"] = [
        {"title": title, "uri": uris["predictions", i]} for i, (title, _) in enumerate(predictions)
    ]
    return context


def map_label(point) -> str:
    return f"{point['dataset']} f={point['fraction']:g} ({point['backbone']} · {point['weights']})"


def render_html(summary, recipes, similarities, settings: ReportSettings = ReportSettings()) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["fmt"] = lambda value, spec=".3f": "–" if pd.isna(value) else format(value, spec)
    return environment.get_template("report.html.j2").render(**build_context(summary, recipes, similarities, settings))


def render_report(
    summary_csv: Path,
    recipes_csv: Path,
    similarity_files: list[Path],
    out_html: Path,
    settings: ReportSettings = ReportSettings(),
) -> None:
    html = render_html(
        data.load_summary(summary_csv), data.load_recipes(recipes_csv), load_similarities(similarity_files), settings
    )
    with atomic_path(out_html) as tmp:
        tmp.write_text(html)
