"""The report's figures: matplotlib/seaborn plots rendered to PNG data URIs, byte for byte the same
for the same inputs (no software metadata, fixed hash salt). Each function takes the tables of
``report.data`` and returns a figure; none of them chooses anything."""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, deterministic raster output

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from seaborn.utils import relative_luminance

DPI = 90
PLOT_RC = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.75),
    "svg.hashsalt": "transfergrid",
    "figure.max_open_warning": 0,
}


def figure_to_data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def annotated_heatmap(ax, values: pd.DataFrame, labels, cmap: str, vmin: float, vmax: float, row_labels: bool, **text):
    """``values`` as coloured cells, first row at the top, NaN cells blank, ``labels`` (strings, ""
    for none) written in each cell in dark or white by the cell colour's luminance, as
    ``seaborn.heatmap`` draws them. Not ``seaborn.heatmap`` itself for a figure of many heatmaps: it
    draws the whole figure on every call to decide whether tick labels overlap, so a figure of n
    heatmaps was drawn n + 1 times (1.9 of the 6 s the report took on a five-head grid). Tick labels
    stay horizontal: a heatmap facet's columns are strategies, 1.3 inches each."""
    cells = np.ma.masked_invalid(values.to_numpy(dtype=float))
    mesh = ax.pcolormesh(cells, cmap=cmap, vmin=vmin, vmax=vmax, edgecolors="white", linewidth=0.5)
    rows, columns = cells.shape
    ax.set(xlim=(0, columns), ylim=(rows, 0))
    ax.set_xticks(np.arange(columns) + 0.5, [str(c) for c in values.columns])
    ax.set_yticks(np.arange(rows) + 0.5, [str(r) for r in values.index] if row_labels else [])
    ax.grid(False)
    sns.despine(ax=ax, left=True, bottom=True)
    colours, blank = mesh.to_rgba(cells), np.ma.getmaskarray(cells)
    for (row, column), label in np.ndenumerate(np.asarray(labels, dtype=str)):
        if label and not blank[row, column]:
            dark = relative_luminance(colours[row, column]) > 0.408
            ax.text(column + 0.5, row + 0.5, label, ha="center", va="center", color=".15" if dark else "w", **text)
    return mesh


def plot_heatmaps(tables: list[tuple[str, pd.DataFrame, pd.DataFrame]], metric_label: str = "mean test top-1"):
    """One heatmap per facet, annotated "mean ± CI half width", all on one colour scale with a
    single shared colour bar."""
    values = np.concatenate([mean.to_numpy(dtype=float).ravel() for _, mean, _ in tables])
    vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
    if vmin == vmax:
        vmin, vmax = vmin - 0.005, vmax + 0.005
    n_rows, n_columns = tables[0][1].shape
    ncols = min(3, len(tables))
    nrows = math.ceil(len(tables) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        squeeze=False,
        layout="constrained",
        figsize=(ncols * (2.8 + 1.3 * n_columns), nrows * (1.1 + 0.5 * n_rows)),
    )
    used = []
    for i, (ax, (title, mean, half)) in enumerate(zip(axes.flat, tables)):
        labels = np.vectorize(
            lambda m, h: "" if np.isnan(m) else f"{m:.3f}" if np.isnan(h) else f"{m:.3f}\n± {h:.3f}", otypes=[str]
        )(mean.to_numpy(dtype=float), half.to_numpy(dtype=float))
        annotated_heatmap(ax, mean, labels, "viridis", vmin, vmax, row_labels=i % ncols == 0, fontsize=6.5)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("strategy")
        ax.set_ylabel("backbone · weights" if i % ncols == 0 else "")
        used.append(ax)
    for ax in list(axes.flat)[len(tables) :]:
        ax.set_visible(False)
    fig.colorbar(used[0].collections[0], ax=used, label=metric_label, shrink=0.9)
    return fig


def _mark_phase_changes(ax, history: pd.DataFrame) -> None:
    if "phase" not in history:
        return
    phases = history["phase"].astype(str).to_numpy()
    for i in np.flatnonzero(phases[1:] != phases[:-1]) + 1:
        ax.axvline(history["epoch"].iloc[i] - 0.5, color="grey", linestyle=":", linewidth=1)


def plot_curve_pair(loss_ax, acc_ax, history: pd.DataFrame, best_epoch: int, title: str) -> None:
    """Loss and accuracy per epoch, train solid and val dashed; the kept epoch is marked."""
    for ax, quantity in ((loss_ax, "loss"), (acc_ax, "acc")):
        ax.plot(history["epoch"], history[f"train_{quantity}"], color="C0", marker=".", label="train")
        ax.plot(history["epoch"], history[f"val_{quantity}"], color="C1", linestyle="--", marker=".", label="val")
        ax.axvline(best_epoch, color="C3", linewidth=0.8, alpha=0.6, label="kept epoch (best val)")
        _mark_phase_changes(ax, history)
        ax.set_xlabel("epoch")
    loss_ax.set_title(f"{title}\nloss", fontsize=7)
    acc_ax.set_title("accuracy", fontsize=7)


def plot_curves(panels: list[tuple[str, pd.DataFrame, int]]):
    """Small multiples: two recipes per figure row, each a (loss, accuracy) pair."""
    pairs_per_row = min(2, len(panels))
    nrows = math.ceil(len(panels) / pairs_per_row)
    fig, axes = plt.subplots(
        nrows, 2 * pairs_per_row, squeeze=False, layout="constrained", figsize=(2 * pairs_per_row * 2.7, nrows * 2.2)
    )
    flat = list(axes.flat)
    for i, (title, history, best_epoch) in enumerate(panels):
        plot_curve_pair(flat[2 * i], flat[2 * i + 1], history, best_epoch, title)
    for ax in flat[2 * len(panels) :]:
        ax.set_visible(False)
    handles, labels = flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=3, fontsize=7, frameon=False)
    return fig


def plot_confusion(confusion: pd.DataFrame, title: str):
    """Colour is the row-normalised rate (recall per true class); the numbers are counts."""
    counts = confusion.to_numpy()
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    n = len(confusion.index)
    side = min(8.0, 2.0 + 0.3 * n)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), layout="constrained")
    sns.heatmap(
        pd.DataFrame(rates, index=confusion.index, columns=confusion.columns),
        ax=ax,
        vmin=0,
        vmax=1,
        cmap="Blues",
        annot=counts if n <= 20 else False,
        fmt="d",
        square=True,
        cbar_kws={"label": "fraction of the true class"},
    )
    ax.tick_params(axis="y", rotation=0)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=8)
    return fig


def plot_style():
    """The report's plotting style, as a context manager around every figure it draws."""
    return matplotlib.rc_context(PLOT_RC)


def _errorbar_series(ax, x, mean, low, high, label, **style) -> None:
    yerr = np.vstack([mean - low, high - mean])
    yerr = np.where(np.isnan(yerr), 0, yerr)
    ax.errorbar(x, mean, yerr=yerr, capsize=2, marker="o", markersize=3, linewidth=1, label=label, **style)


def plot_size_curves(curves: dict[str, pd.DataFrame], label_of) -> plt.Figure:
    """Test top-1 (mean, 95 % interval) against training images per class, one panel per dataset,
    one line per recipe; scratch dashed, pretrained solid."""
    fig, axes = plt.subplots(1, len(curves), squeeze=False, layout="constrained", figsize=(4.6 * len(curves), 3.3))
    for ax, (dataset, part) in zip(axes.flat, curves.items()):
        for key, series in part.groupby(["backbone", "weights", "strategy", "head"], sort=True):
            series = series.sort_values("images_per_class")
            _errorbar_series(
                ax,
                series["images_per_class"],
                series["test_top1_mean"],
                series["test_top1_ci_low"],
                series["test_top1_ci_high"],
                label_of(series.iloc[0]),
                linestyle="--" if key[1] == "none" else "-",
            )
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("training images per class (log)")
        ax.set_ylabel("test top-1")
        ax.set_title(dataset, fontsize=8)
        ax.legend(fontsize=6, frameon=False)
    return fig


def plot_freeze_depth(sweep: pd.DataFrame, label_of) -> plt.Figure:
    """Test top-1 against the number of frozen stages (0 = full fine-tune), one line per series."""
    fig, ax = plt.subplots(figsize=(5.5, 3.3), layout="constrained")
    for _key, series in sweep.groupby(["dataset", "fraction", "backbone", "weights", "head"], sort=True):
        _errorbar_series(
            ax,
            series["depth"],
            series["test_top1_mean"],
            series["test_top1_ci_low"],
            series["test_top1_ci_high"],
            label_of(series.iloc[0]),
        )
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("frozen stages (freeze:k; 0 = full fine-tune)")
    ax.set_ylabel("test top-1")
    ax.legend(fontsize=6, frameon=False)
    return fig


def plot_reliability(panels: list[tuple[str, dict]]) -> plt.Figure:
    """Reliability diagrams: accuracy against confidence per bin (bar width = bin), the diagonal
    is perfect calibration; the title carries the ECE."""
    fig, axes = plt.subplots(
        1, len(panels), squeeze=False, layout="constrained", figsize=(2.8 * len(panels), 2.9), sharey=True
    )
    for ax, (title, test) in zip(axes.flat, panels):
        bins = test["reliability"]
        edges = np.asarray(bins["edges"], dtype=float)
        accuracy = np.array([np.nan if a is None else a for a in bins["accuracy"]], dtype=float)
        ax.bar(edges[:-1], np.nan_to_num(accuracy), width=np.diff(edges), align="edge", edgecolor="white")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(f"{title}\nECE {test['ece']:.3f}", fontsize=7)
    axes.flat[0].set_ylabel("accuracy")
    return fig


def plot_predictions(images: np.ndarray, truths: list[str], predictions: list[str], confidences, title: str):
    """A grid of test images with predicted and true labels (green right, red wrong), as the
    tutorial's visualize_model."""
    count = len(images)
    ncols = min(6, count)
    nrows = math.ceil(count / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(1.5 * ncols, 1.75 * nrows), layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, truth, prediction, confidence in zip(axes.flat, images, truths, predictions, confidences):
        pixels = image.transpose(1, 2, 0)
        ax.imshow(pixels[..., 0] if pixels.shape[2] == 1 else pixels, cmap="gray" if pixels.shape[2] == 1 else None)
        right = truth == prediction
        ax.set_title(
            f"{prediction} ({confidence:.2f})" + ("" if right else f"\ntrue: {truth}"),
            fontsize=6,
            color="#1d5e2c" if right else "#b00020",
        )
    fig.suptitle(title, fontsize=8)
    return fig


def plot_quadrant_map(points: pd.DataFrame, thresholds: dict, label_of) -> plt.Figure:
    """The size x similarity plane: the boundaries, the decision map's advice in each quadrant, and
    one point per dataset, fraction and weight source (bars: the bootstrap interval)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.4), layout="constrained")
    x_threshold, y_threshold = thresholds["size_threshold"], thresholds["similarity_threshold"]
    x_low = min(points["images_per_class"].min(), x_threshold) / 2
    x_high = max(points["images_per_class"].max(), x_threshold) * 2
    y_low = min(points["similarity_low"].min(), y_threshold) - 0.03
    y_high = min(1.0, max(points["similarity_high"].max(), y_threshold) + 0.03)
    ax.axvline(x_threshold, color="grey", linewidth=1)
    ax.axhline(y_threshold, color="grey", linewidth=1)
    advice = {
        (0, 1): "small + similar:\nfreeze base, new classifier",
        (1, 1): "large + similar:\nfine-tune upper stages or all",
        (0, 0): "small + different:\nfreeze fewer, augment",
        (1, 0): "large + different:\ntrain the entire model",
    }
    for (right, top), text in advice.items():
        ax.text(
            x_high * 0.95 if right else x_low * 1.05,
            y_high - 0.005 if top else y_low + 0.005,
            text,
            ha="right" if right else "left",
            va="top" if top else "bottom",
            fontsize=6.5,
            color="#555555",
        )
    for _, point in points.iterrows():
        yerr = [[point["similarity"] - point["similarity_low"]], [point["similarity_high"] - point["similarity"]]]
        ax.errorbar(point["images_per_class"], point["similarity"], yerr=np.abs(yerr), fmt="o", capsize=2)
        ax.annotate(
            label_of(point),
            (point["images_per_class"], point["similarity"]),
            fontsize=6,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlim(x_low, x_high)
    ax.set_ylim(y_low, y_high)
    ax.set_xlabel("training images per class (log)")
    ax.set_ylabel("similarity to the source (GBC separability)\nbars: ±1.96 bootstrap std")
    return fig


def plot_learning_rates(search: pd.DataFrame, label_of) -> plt.Figure:
    """Validation accuracy against the learning-rate multiplier, one line per recipe (mean over
    seeds), the chosen candidates marked."""
    fig, ax = plt.subplots(figsize=(5.5, 3.3), layout="constrained")
    trained = search[search["status"] == "trained"]
    for _key, recipe in trained.groupby(["dataset", "fraction", "backbone", "weights", "strategy", "head"], sort=True):
        mean = recipe.groupby("lr_multiplier")["val_acc"].mean()
        ax.plot(mean.index, mean.values, marker="o", markersize=3, linewidth=1, label=label_of(recipe.iloc[0]))
        chosen = recipe[recipe["chosen"]]
        ax.scatter(chosen["lr_multiplier"], chosen["val_acc"], marker="*", s=40, color="black", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("learning-rate multiplier (log); ★ chosen per seed")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=6, frameon=False)
    return fig


def plot_cost(recipes: pd.DataFrame, front_time: pd.DataFrame, front_params: pd.DataFrame, label_of):
    """Validation accuracy against wall time and against trainable parameters, with the Pareto
    fronts (no other recipe is both cheaper and better)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained", sharey=True)
    for ax, cost, front, label in (
        (axes[0], "cost_seconds", front_time, "mean seconds per cell: training + feature extraction (log)"),
        (axes[1], "trainable_params", front_params, "trainable parameters (log)"),
    ):
        ax.scatter(recipes[cost].clip(lower=1e-3), recipes["val_acc_mean"], s=14, alpha=0.7)
        ax.step(front[cost].clip(lower=1e-3), front["val_acc_mean"], where="post", color="C3", label="Pareto front")
        for _, row in front.iterrows():
            ax.annotate(
                label_of(row),
                (max(row[cost], 1e-3), row["val_acc_mean"]),
                fontsize=5.5,
                xytext=(3, -8),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel("mean validation accuracy")
    axes[0].legend(fontsize=7, frameon=False)
    return fig
