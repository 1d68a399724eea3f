"""The report's figures: matplotlib/seaborn plots rendered to PNG data URIs, byte for byte the same
for the same inputs (no software metadata, fixed hash salt)."""

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


def plot_heatmaps(tables: list[tuple[str, pd.DataFrame]]):
    """One annotated heatmap per facet, all on one colour scale with a single shared colour bar."""
    values = np.concatenate([table.to_numpy(dtype=float).ravel() for _, table in tables])
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
        figsize=(ncols * (2.6 + 0.9 * n_columns), nrows * (1.1 + 0.45 * n_rows)),
    )
    used = []
    for i, (ax, (title, table)) in enumerate(zip(axes.flat, tables)):
        sns.heatmap(
            table,
            ax=ax,
            vmin=vmin,
            vmax=vmax,
            cmap="viridis",
            annot=True,
            fmt=".3f",
            cbar=False,
            linewidths=0.5,
            linecolor="white",
            yticklabels=i % ncols == 0,
        )
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("strategy")
        ax.set_ylabel("backbone · weights" if i % ncols == 0 else "")
        ax.tick_params(axis="y", rotation=0)
        used.append(ax)
    for ax in list(axes.flat)[len(tables) :]:
        ax.set_visible(False)
    fig.colorbar(used[0].collections[0], ax=used, label="mean test top-1", shrink=0.9)
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
        ax.plot(history["epoch"], history[f"train_{quantity}"], color="C0", label="train")
        ax.plot(history["epoch"], history[f"val_{quantity}"], color="C1", linestyle="--", label="val")
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
    side = min(12.0, 2.5 + 0.45 * n)
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
