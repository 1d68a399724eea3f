"""aggregate_cells and render_report on small synthetic, internally consistent cell directories."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from transfergrid.aggregate import COORDINATES, SUMMARY_COLUMNS, aggregate_cells
from transfergrid.errors import TransferGridError
from transfergrid.recipes import recipe_table, write_recipes
from transfergrid.report import ReportSettings, render_report
from transfergrid.report.data import heatmap_tables, load_summary
from transfergrid.report.figures import annotated_heatmap

CLASSES = ["cat", "dog", "fox"]
MODELS = [("resnet18", "none"), ("mobilenet_v3_small", "imagenet_pkg")]
STRATEGIES = ["full", "frozen"]
SEEDS = [0, 1]

# (backbone, weights, strategy) -> (val_acc, test_top1) per seed. The pretrained "full" recipe wins on
# validation; the scratch "full" cell with seed 1 has the highest *test* accuracy of all, so a report
# that chose by test would pick it.
SCORES = {
    ("mobilenet_v3_small", "imagenet_pkg", "full"): [(0.90, 0.80), (0.92, 0.81)],
    ("mobilenet_v3_small", "imagenet_pkg", "frozen"): [(0.85, 0.84), (0.84, 0.83)],
    ("resnet18", "none", "full"): [(0.60, 0.86), (0.62, 0.95)],
    ("resnet18", "none", "frozen"): [(0.40, 0.38), (0.42, 0.41)],
}
VAL_BEST = ("mobilenet_v3_small", "imagenet_pkg", "full", 1)
TEST_BEST = ("resnet18", "none", "full", 1)


def confusion_for(top1: float, num_test: int = 60) -> np.ndarray:
    """A square confusion matrix of ``num_test`` images whose accuracy is close to ``top1``."""
    per_class = num_test // len(CLASSES)
    correct = round(top1 * per_class)
    matrix = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    for i in range(len(CLASSES)):
        matrix[i, i] = correct
        matrix[i, (i + 1) % len(CLASSES)] = per_class - correct
    return matrix


def write_cell(
    root: Path,
    backbone: str,
    weights: str,
    strategy: str,
    seed: int,
    val_acc: float,
    top1: float,
    dataset: str = "flowers",
    fraction: float = 1.0,
    head: str = "linear",
    epochs: int = 4,
) -> Path:
    cell_dir = root / "cells" / dataset / repr(fraction) / backbone / weights / strategy / head / f"seed{seed}"
    cell_dir.mkdir(parents=True)
    cell = {
        "dataset": dataset,
        "fraction": fraction,
        "backbone": backbone,
        "weights": weights,
        "strategy": strategy,
        "head": head,
        "seed": seed,
        "image_size": 64,
        "epochs": epochs,
        "batch_size": 16,
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "schedule": {"name": "cosine"},
        "augment": "light",
        "device": "cpu",
        "label_smoothing": 0.0,
        "lr_multiplier": 1.0,
    }
    epoch = np.arange(1, epochs + 1)
    val_curve = val_acc * np.array([0.6, 0.8, 1.0, 0.97])[:epochs]
    history = pd.DataFrame(
        {
            "epoch": epoch,
            "phase": "train",
            "train_loss": 1.2 / epoch,
            "train_acc": np.minimum(1, val_curve + 0.05),
            "val_loss": 1.3 / epoch + 0.05 * epoch,
            "val_acc": val_curve,
            "lr": 1e-3 / epoch,
            "seconds": 1.5,
        }
    )
    frozen = strategy == "frozen"
    total = 1_000_000 if backbone == "resnet18" else 500_000
    trainable = 3 * 64 + 3 if frozen else total
    train = {
        "status": "trained",
        "fit": "through_network",
        "best_epoch": 3,
        "best_val_acc": val_acc,
        "best_val_loss": 0.5,
        "epochs_run": epochs,
        "trainable_params": trainable,
        "frozen_params": total - trainable,
        "total_params": total,
        "wall_seconds": 6.0 + seed,
        "device": "cpu",
        "num_train": int(90 * fraction),
        "num_val": 30,
        "num_classes": len(CLASSES),
    }
    matrix = confusion_for(top1)
    accuracy = float(np.trace(matrix) / matrix.sum())
    test = {
        "top1": top1,
        "balanced_accuracy": accuracy,
        "macro_f1": accuracy - 0.01,
        "num_test": int(matrix.sum()),
        "classes": CLASSES,
        "nll": 0.5,
        "ece": 0.05,
        "top5": None,
        "reliability": {
            "edges": [i / 15 for i in range(16)],
            "count": [0] * 10 + [10, 10, 10, 10, 20],
            "confidence": [None] * 10 + [0.7, 0.75, 0.8, 0.87, 0.95],
            "accuracy": [None] * 10 + [0.6, 0.7, 0.8, 0.9, 0.95],
        },
    }
    selection = {
        "chosen": "lr1.0",
        "lr_multiplier": 1.0,
        "lr": 1e-3,
        "at_edge": False,
        "candidates": [{"candidate": "lr1.0", "status": "trained", "val_acc": val_acc}],
    }
    confusion = pd.DataFrame(matrix, columns=CLASSES)
    confusion.insert(0, "true", CLASSES)
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=6)
    predictions = pd.DataFrame({"index": range(6), "label": [0, 1, 2] * 2, "pred": probs.argmax(1)})
    for i, name in enumerate(CLASSES):
        predictions[f"p_{name}"] = probs[:, i]

    candidate_dir = cell_dir / "lr1.0"
    candidate_dir.mkdir()
    (candidate_dir / "cell.json").write_text(json.dumps(cell))
    (candidate_dir / "train.json").write_text(json.dumps(train))
    history.to_csv(candidate_dir / "history.csv", index=False)
    (cell_dir / "selection.json").write_text(json.dumps(selection))
    (cell_dir / "test.json").write_text(json.dumps(test))
    confusion.to_csv(cell_dir / "confusion.csv", index=False)
    predictions.to_csv(cell_dir / "predictions.csv", index=False)
    return cell_dir


def write_grid(root: Path, dataset: str = "flowers") -> dict[tuple, Path]:
    """The 8 cells of SCORES, keyed by (backbone, weights, strategy, seed)."""
    cells = {}
    for (backbone, weights, strategy), per_seed in SCORES.items():
        for seed, (val_acc, top1) in zip(SEEDS, per_seed):
            cells[(backbone, weights, strategy, seed)] = write_cell(
                root, backbone, weights, strategy, seed, val_acc, top1, dataset=dataset
            )
    return cells


def aggregate(cells, root: Path) -> tuple:
    """summary.csv and recipes.csv of ``cells``, as the aggregate rule writes them."""
    summary = aggregate_cells(cells, root / "summary.csv")
    write_recipes(summary, root / "recipes.csv", root / "leaderboard.md")
    return summary, root / "summary.csv", root / "recipes.csv"


@pytest.fixture()
def grid(tmp_path):
    cells = write_grid(tmp_path)
    # shuffled input order: the summary must come out sorted regardless
    summary, summary_csv, _recipes_csv = aggregate(list(reversed(list(cells.values()))), tmp_path)
    return cells, summary, summary_csv


@pytest.fixture()
def rendered(grid, tmp_path):
    cells, _summary, summary_csv = grid
    out = tmp_path / "report" / "report.html"
    render_report(summary_csv, tmp_path / "recipes.csv", [], out)
    return cells, summary_csv, out, out.read_text(encoding="utf-8")


class TableRows(HTMLParser):
    """The text of every cell of every row of the table with the given id."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.depth, self.rows, self.row, self.cell = table_id, 0, [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and (self.depth or attrs.get("id") == self.table_id):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.row = []
        elif self.depth and tag == "td":
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag == "td" and self.cell is not None:
            self.row.append(self.cell)
            self.cell = None
        elif self.depth and tag == "tr" and self.row:
            self.rows.append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def table_rows(page: str, table_id: str) -> list[list[str]]:
    parser = TableRows(table_id)
    parser.feed(page)
    return parser.rows


def section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', page, flags=re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


# ----------------------------------------------------------------------------------------------
# aggregate_cells


def test_aggregate_has_one_sorted_row_per_cell_with_all_columns(grid):
    cells, summary, summary_csv = grid
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert len(summary) == len(cells) == 8
    assert not summary.duplicated(list(COORDINATES)).any()
    assert summary.equals(summary.sort_values(list(COORDINATES), ignore_index=True))
    on_disk = pd.read_csv(summary_csv, keep_default_na=False)
    assert list(on_disk.columns) == list(SUMMARY_COLUMNS) and len(on_disk) == 8
    assert set(on_disk["weights"]) == {"none", "imagenet_pkg"}  # "none" must not turn into NaN
    assert not [p.name for p in summary_csv.parent.iterdir() if ".tmp" in p.name]


def test_aggregate_values_and_pretrained_flag(grid):
    cells, summary, _ = grid
    assert summary["pretrained"].dtype == bool
    assert (summary["pretrained"] == (summary["weights"] != "none")).all()
    assert summary["pretrained"].sum() == 4
    row = summary.set_index(["backbone", "weights", "strategy", "seed"]).loc[TEST_BEST]
    assert row["val_acc"] == 0.62 and row["test_top1"] == 0.95
    assert row["fraction"] == 1.0 and row["best_epoch"] == 3 and row["num_classes"] == 3
    assert row["trainable_params"] == 1_000_000 and row["frozen_params"] == 0
    assert row["cell_dir"] == str(cells[TEST_BEST])


@pytest.mark.parametrize("name", ["test.json", "selection.json", "lr1.0/train.json", "lr1.0/cell.json"])
def test_aggregate_names_a_missing_file(tmp_path, name):
    cells = write_grid(tmp_path)
    missing = cells[VAL_BEST] / name
    missing.unlink()
    out = tmp_path / "summary.csv"
    with pytest.raises(TransferGridError, match=re.escape(str(missing))):
        aggregate_cells(list(cells.values()), out)
    assert not out.exists()


def test_aggregate_names_a_missing_key(tmp_path):
    cells = write_grid(tmp_path)
    path = cells[VAL_BEST] / "test.json"
    path.write_text(json.dumps({"top1": 0.5}))
    with pytest.raises(TransferGridError, match=re.escape(str(path)) + ".*balanced_accuracy"):
        aggregate_cells(list(cells.values()), tmp_path / "summary.csv")


# ----------------------------------------------------------------------------------------------
# report data


def test_leaderboard_ranks_by_validation_not_test(grid):
    _, _summary, summary_csv = grid
    board = recipe_table(load_summary(summary_csv))
    assert len(board) == 4 and (board["n"] == 2).all()
    order = list(zip(board["backbone"], board["weights"], board["strategy"]))
    by_val = sorted(SCORES, key=lambda k: -np.mean([v for v, _ in SCORES[k]]))
    assert order == by_val
    assert list(board["rank"]) == [1, 2, 3, 4]


def test_heatmap_tables_separate_pretrained_and_scratch_rows(grid):
    _, _, summary_csv = grid
    summary = recipe_table(load_summary(summary_csv))
    tables = heatmap_tables(summary)
    assert len(tables) == 1
    title, table, half_width = tables[0]
    assert "dataset=flowers" in title and "fraction=1.0" in title and "head=linear" in title
    assert list(table.index) == ["mobilenet_v3_small · imagenet_pkg", "resnet18 · none"]
    assert list(table.columns) == ["frozen", "full"]
    assert table.loc["resnet18 · none", "full"] == pytest.approx((0.86 + 0.95) / 2)
    # t(0.975, 1) x sample std / sqrt(2): the 95 % half width of two seeds
    assert half_width.loc["resnet18 · none", "full"] == pytest.approx(
        12.7062 * np.std([0.86, 0.95], ddof=1) / 2**0.5, rel=1e-4
    )
    with pytest.raises(TransferGridError, match="colour"):
        heatmap_tables(summary, facet_by=("colour",))
    assert [t for t, *_ in heatmap_tables(summary, facet_by=("freeze_depth",))] == [
        "freeze_depth=0",
        "freeze_depth=all",
    ]


def test_heatmap_facets_follow_the_parameter(tmp_path):
    cells = list(write_grid(tmp_path / "a", dataset="flowers").values())
    cells += list(write_grid(tmp_path / "b", dataset="pets").values())
    summary = aggregate_cells(cells, tmp_path / "summary.csv")
    recipes = recipe_table(summary)
    assert [t for t, *_ in heatmap_tables(recipes)] == [
        "dataset=flowers · fraction=1.0 · head=linear",
        "dataset=pets · fraction=1.0 · head=linear",
    ]
    assert [t for t, *_ in heatmap_tables(recipes, facet_by=("head",))] == ["head=linear"]
    tables = heatmap_tables(recipes, facet_by=("dataset", "strategy"))
    assert len(tables) == 4 and all(table.shape == (2, 2) for _, table, _ in tables)


# ----------------------------------------------------------------------------------------------
# render_report


def test_heatmap_cells_carry_their_labels_first_row_on_top_and_nan_blank():
    fig, ax = plt.subplots()
    values = pd.DataFrame(
        [[0.1, np.nan], [0.95, 0.5]], index=["net · none", "net · imagenet"], columns=["full", "frozen"]
    )
    labels = np.array([["0.100", "ignored: no value"], ["0.950", "0.500"]])
    annotated_heatmap(ax, values, labels, "viridis", 0.0, 1.0, row_labels=True)
    written = {(text.get_position(), text.get_text(), text.get_color()) for text in ax.texts}
    plt.close(fig)
    # viridis is dark purple at 0.1 (white text) and bright yellow at 0.95 (dark text)
    assert written == {((0.5, 0.5), "0.100", "w"), ((0.5, 1.5), "0.950", ".15"), ((1.5, 1.5), "0.500", "w")}
    assert ax.get_ylim() == (2.0, 0.0)  # the first row at the top, as a table reads
    assert [t.get_text() for t in ax.get_yticklabels()] == ["net · none", "net · imagenet"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["full", "frozen"]


def test_report_lists_every_recipe_with_its_init(rendered):
    _, _, _, page = rendered
    rows = table_rows(page, "leaderboard-table")
    assert len(rows) == 4
    # columns: rank, dataset, fraction, backbone, init, strategy, head, seeds, val, test, ...
    seen = [(r[3], r[4], r[5]) for r in rows]
    assert seen == [
        ("mobilenet_v3_small", "pretrained (imagenet_pkg)", "full"),
        ("mobilenet_v3_small", "pretrained (imagenet_pkg)", "frozen"),
        ("resnet18", "scratch", "full"),
        ("resnet18", "scratch", "frozen"),
    ]
    assert rows[0][0] == "1" and rows[0][7] == "2"
    assert rows[0][8] == "0.910 ± 0.127"  # mean ± 95 % half width of the validation accuracies 0.90 and 0.92
    assert "validation" in section(page, "leaderboard") and "never used to" in page


def test_the_summary_puts_the_test_sets_own_interval_under_the_winners_accuracy(rendered):
    _, summary_csv, _, page = rendered
    assert (load_summary(summary_csv)["num_test"] == 60).all()
    # The validation-best recipe scored 0.80 and 0.81 on the same 60 test images: Wilson's interval
    # of 0.805 on 60 images, z = 1.96, written out.
    p, n, z = 0.805, 60, 1.959964
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    summary = section(page, "summary")
    assert "0.805 ± " in summary
    assert f"test set of 60: {centre - half:.3f}–{centre + half:.3f}" in summary


def test_a_logreg_recipe_shows_its_chosen_C_and_warns_at_the_end_of_the_C_grid(tmp_path):
    cells = write_grid(tmp_path)
    for seed, C in zip(SEEDS, (0.1, 100.0)):
        cell_dir = cells[("resnet18", "none", "frozen", seed)]
        train = json.loads((cell_dir / "lr1.0" / "train.json").read_text())
        train.update(fit="fit_head_in_closed_form", C=C, C_at_edge=C == 100.0)
        (cell_dir / "lr1.0" / "train.json").write_text(json.dumps(train))
        selection = json.loads((cell_dir / "selection.json").read_text())
        (cell_dir / "selection.json").write_text(json.dumps({**selection, "lr": None}))
    _summary, summary_csv, recipes_csv = aggregate(list(cells.values()), tmp_path)
    out = tmp_path / "report.html"
    render_report(summary_csv, recipes_csv, [], out)
    page = out.read_text(encoding="utf-8")
    lr_or_c = {(r[3], r[5]): r[14] for r in table_rows(page, "leaderboard-table")}
    assert lr_or_c[("resnet18", "frozen")].startswith("C=0.1 100") and "⚠" in lr_or_c[("resnet18", "frozen")]
    assert lr_or_c[("resnet18", "full")] == "0.001"
    assert "The chosen C is at an end of the C grid for: " in section(page, "learning-rates")


def test_a_head_on_cached_features_is_charged_the_extraction_it_needs(tmp_path):
    cells = write_grid(tmp_path)
    for seed in SEEDS:
        candidate_dir = cells[("resnet18", "none", "frozen", seed)] / "lr1.0"
        train = json.loads((candidate_dir / "train.json").read_text())
        (candidate_dir / "train.json").write_text(json.dumps({**train, "feature_seconds": 4.0}))
    _summary, summary_csv, recipes_csv = aggregate(list(cells.values()), tmp_path)
    out = tmp_path / "report.html"
    render_report(summary_csv, recipes_csv, [], out)
    cost = {(r[3], r[5]): r[15] for r in table_rows(out.read_text(encoding="utf-8"), "leaderboard-table")}
    mean_wall = sum(6.0 + seed for seed in SEEDS) / len(SEEDS)
    assert cost[("resnet18", "frozen")] == f"{mean_wall + 4.0:.1f}"
    assert cost[("resnet18", "full")] == f"{mean_wall:.1f}"


def test_report_is_self_contained(rendered):
    _, _, out, page = rendered
    assert page.count("data:image/png;base64,") >= 3
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page, flags=re.I)
    assert "<script src" not in page.lower() and "<link" not in page.lower()  # the one script is inline
    assert not [p.name for p in out.parent.iterdir() if p.name != "report.html"]
    for section_id in ("summary", "leaderboard", "heatmaps", "curves", "confusion", "cost"):
        assert 'class="how"' in section(page, section_id)


def test_confusion_section_shows_the_validation_best_cell(rendered):
    _cells, _, _, page = rendered
    best = section(page, "confusion")
    # the validation-best recipe's validation-best seed, never the test-best cell
    assert "mobilenet_v3_small · pretrained (imagenet_pkg) · full · seed 1" in best
    assert "resnet18" not in best
    assert best.count("data:image/png;base64,") == 2  # its confusion matrix and the reliability diagram
    summary = section(page, "summary")
    assert "mobilenet_v3_small · pretrained (imagenet_pkg) · full" in summary and "0.805 ± 0.064" in summary


def test_rendering_twice_gives_identical_bytes(rendered, tmp_path):
    _, summary_csv, out, _ = rendered
    again = tmp_path / "again.html"
    render_report(summary_csv, summary_csv.parent / "recipes.csv", [], again)
    assert again.read_bytes() == out.read_bytes()


def test_rendering_in_several_processes_gives_the_same_bytes(rendered, tmp_path):
    _, summary_csv, out, _ = rendered
    parallel = tmp_path / "parallel.html"
    render_report(summary_csv, summary_csv.parent / "recipes.csv", [], parallel, ReportSettings(processes=3))
    assert parallel.read_bytes() == out.read_bytes()


def test_strings_from_data_are_escaped(tmp_path):
    cells = [
        write_cell(tmp_path, "net", "none", "full", 0, 0.5, 0.5, dataset="a<b>&c"),
        write_cell(tmp_path, "net", "imagenet_pkg", "full", 0, 0.6, 0.6, dataset="a<b>&c"),
    ]
    aggregate(cells, tmp_path)
    render_report(tmp_path / "summary.csv", tmp_path / "recipes.csv", [], tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "a&lt;b&gt;&amp;c" in page and "a<b>" not in page


def test_report_names_a_missing_history(grid, tmp_path):
    cells, _, summary_csv = grid
    missing = cells[(*VAL_BEST[:3], 0)] / "lr1.0" / "history.csv"  # curves are drawn from the lowest seed
    missing.unlink()
    with pytest.raises(TransferGridError, match=re.escape(str(missing))):
        render_report(summary_csv, tmp_path / "recipes.csv", [], tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()
