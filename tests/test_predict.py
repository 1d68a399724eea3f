"""`transfergrid predict`: trained cells on image files, with the very preprocessing and model the
training pipeline used; the validation-best cell by default; one-line errors for bad input.

The module builds one real project in-process, as the workflow would: a folder dataset of PNG and
JPEG files of several sizes (build_dataset), its image cache (build_cache), a split, a network cell
and a head-only frozen cell on a file: base, both evaluated, and results/summary.csv.
"""

import csv
import io
import json
import shutil
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import cell_config
from PIL import Image

from transfergrid import cli
from transfergrid.aggregate import aggregate_cells
from transfergrid.batches import make_batches
from transfergrid.cell import CellInputs, train_candidate
from transfergrid.evaluate import evaluate_frozen_group, evaluate_network_cell, load_trained_model
from transfergrid.features import FeatureSource, build_feature_cache
from transfergrid.frozen import FrozenCandidate, fit_frozen_group
from transfergrid.grid import candidate_settings
from transfergrid.imagecache import build_cache, load_cache
from transfergrid.io import read_json, read_manifest
from transfergrid.loop import predict
from transfergrid.naming import Cell, weights_path
from transfergrid.predict import best_cell, predict_images
from transfergrid.sources import build_dataset
from transfergrid.split import make_split
from transfergrid.weights import import_checkpoint

QUIET = lambda message: None  # noqa: E731
CLASSES = ["bright", "dark", "mid"]
LEVELS = {"dark": 40, "mid": 128, "bright": 215}
SIZE = 32


def write_source_images(root: Path) -> None:
    """Grayscale images whose level tells the class, in sizes that need resizing and cropping, one
    JPEG per class; the dataset is grayscale (one channel), as digits are."""
    rng = np.random.default_rng(0)
    for name, level in LEVELS.items():
        for i in range(12):
            height, width = (40, 56) if i % 2 else (48, 36)
            pixels = np.clip(rng.normal(level, 30, (height, width)), 0, 255).astype(np.uint8)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(root / name / f"img{i:02d}.{'jpg' if i == 5 else 'png'}")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project directory whose results/ the workflow could have written."""
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the paths the workflow records (weights files, summary rows) are relative
        write_source_images(Path("source"))
        info = build_dataset("tiny", {"source": "folder", "path": "source"}, "results/datasets/tiny", log=QUIET)
        assert info["classes"] == CLASSES and info["channels"] == 1
        manifest_csv = Path("results/datasets/tiny/manifest.csv")
        Path("results/splits").mkdir()
        make_split(read_manifest(manifest_csv), 0.25, 0.25, seed=0).to_csv("results/splits/tiny.csv", index=False)
        build_cache(manifest_csv, SIZE, 1, Path(f"results/cache/tiny/{SIZE}px.npy"), threads=2)
        inputs = CellInputs(
            Path("results/splits/tiny.csv"),
            Path("results/datasets/tiny/classes.json"),
            Path("results/cache/tiny/32px.npy"),
        )

        # A network cell: resnet18 from scratch, two learning-rate candidates, the chosen one evaluated.
        network = Cell("tiny", "1.0", "resnet18", "none", "full", "linear", 0)
        settings = cell_config(dataset="tiny", strategy="full", epochs=1)
        candidates = [
            train_candidate(candidate_settings(settings, m), inputs, Path(network.candidate_path(m)), log=QUIET).out_dir
            for m in ("0.1", "1.0")
        ]
        evaluate_network_cell(candidates, inputs.cache, inputs.split, Path(network.path), log=QUIET)

        # A frozen head on cached features of a file: base (model A -> model B: the network cell's
        # own backbone), recorded with its weights file relative to the project directory.
        source = f"file:{Path(network.path, read_json(Path(network.path) / 'selection.json')['chosen'], 'model.pt')}"
        weights_file = weights_path("results/weights", "resnet18", source)
        import_checkpoint("resnet18", source.removeprefix("file:"), Path(weights_file), log=QUIET)
        frozen = Cell("tiny", "1.0", "resnet18", source, "frozen", "linear", 0)
        frozen_settings = cell_config(dataset="tiny", strategy="frozen", weights=source, features=True, epochs=3)
        features = Path("results/features/tiny.pt")
        feature_source = FeatureSource("resnet18", source, Path(weights_file), init_seed=0)
        build_feature_cache(feature_source, inputs.cache, features, batch_size=8, device="cpu", log=QUIET)
        frozen_candidate = FrozenCandidate(
            candidate_settings(frozen_settings, "1.0"), Path(frozen.candidate_path("1.0")), weights_file
        )
        fit_frozen_group([frozen_candidate], features, inputs.split, inputs.classes, log=QUIET)
        evaluate_frozen_group([(Path(frozen.path), [frozen_candidate.out_dir])], features, inputs.split, log=QUIET)

        aggregate_cells([Path(network.path), Path(frozen.path)], Path("results/summary.csv"))
    return {"root": root, "network": network.path, "frozen": frozen.path, "weights_file": weights_file}


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project["root"])
    return project


def chosen_candidate(cell_dir) -> Path:
    return Path(cell_dir) / read_json(Path(cell_dir) / "selection.json")["chosen"]


def pipeline_probabilities(candidate: Path) -> np.ndarray:
    """What the training pipeline gives on every row of the image cache: the evaluation batches
    through the loaded model, softmax as the test evaluation computes it."""
    model, settings, _ = load_trained_model(candidate / "model.pt")
    images, labels = load_cache(Path(f"results/cache/tiny/{SIZE}px.npy"))
    batches = make_batches(settings, images, labels, np.arange(len(labels)), torch.device("cpu"), False)
    logits, _ = predict(model, batches)
    return logits.double().softmax(1).numpy()


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------------------
# The preprocessing and the model of training


@pytest.mark.parametrize("cell", ["network", "frozen"])
def test_training_images_get_exactly_the_training_pipelines_probabilities(in_project, cell, capsys):
    """The source folder's own files (PNG and JPEG, resized and cropped on the way) predicted from
    the files give the probabilities the model gives on the image cache's rows, bit for bit; the
    frozen cell's head-only model rebuilds its base from the weights file it recorded."""
    candidate = chosen_candidate(in_project[cell])
    expected = pipeline_probabilities(candidate)
    code, out, err = run(
        ["predict", "--dataset", "tiny", "--cell", in_project[cell], "source", "--out", "preds.csv"], capsys
    )
    assert code == 0 and err == ""
    assert out.startswith(f"predicted 36 image(s) with cell {candidate} (validation accuracy ")
    rows = read_rows("preds.csv")
    assert list(rows[0]) == ["path", "predicted", "probability", *(f"p_{c}" for c in CLASSES)]
    manifest = read_manifest("results/datasets/tiny/manifest.csv")  # the cache's row order
    assert [Path(r["path"]).resolve() for r in rows] == [Path(p).resolve() for p in manifest["path"]]
    for row, probs in zip(rows, expected):
        assert [row[f"p_{c}"] for c in CLASSES] == [f"{p:.6g}" for p in probs]
        assert row["predicted"] == CLASSES[probs.argmax()] and row["probability"] == f"{probs.max():.6g}"
    predictions = predict_images("tiny", [Path("source")], cell=Path(in_project[cell]))
    assert np.array_equal(predictions.probabilities, expected)
    assert predictions.cell.head_only == (cell == "frozen")
    if cell == "frozen":
        assert predictions.cell.weights_file == Path(in_project["weights_file"])


def test_the_frozen_cells_predictions_match_its_head_on_cached_features(in_project):
    """The rebuilt network predicts the test images as the head did on the cached features."""
    candidate = chosen_candidate(in_project["frozen"])
    on_features = pd.read_csv(Path(in_project["frozen"]) / "predictions.csv")
    manifest = read_manifest("results/datasets/tiny/manifest.csv")
    files = [Path(manifest["path"][i]) for i in on_features["index"]]
    predictions = predict_images("tiny", files, cell=candidate)
    expected = on_features[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(predictions.probabilities, expected, atol=1e-4)


def test_a_color_image_for_a_grayscale_dataset_is_converted_as_the_cache_converts(in_project, tmp_path):
    gray = np.asarray(Image.open("source/mid/img00.png"))
    color = np.stack([gray, np.roll(gray, 3, axis=0), 255 - gray], axis=-1)
    Image.fromarray(color, mode="RGB").save(tmp_path / "color.png")
    Image.fromarray(color, mode="RGB").convert("L").save(tmp_path / "as_gray.png")
    predictions = predict_images("tiny", [tmp_path / "color.png", tmp_path / "as_gray.png"], cell=in_project["network"])
    assert np.array_equal(predictions.probabilities[0], predictions.probabilities[1])


def test_folders_are_walked_recursively_for_image_files_each_once(in_project, tmp_path, capsys):
    new = tmp_path / "new"
    (new / "deeper" / "deepest").mkdir(parents=True)
    shutil.copy("source/dark/img00.png", new / "b.png")
    shutil.copy("source/bright/img01.png", new / "deeper" / "a.PNG")
    shutil.copy("source/mid/img05.jpg", new / "deeper" / "deepest" / "c.jpeg")
    shutil.copy("source/mid/img02.png", new / ".hidden.png")
    (new / "notes.txt").write_text("not an image")
    args = [str(new / "deeper" / "a.PNG"), str(new), str(new / "b.png")]
    code, _, err = run(["predict", "--dataset", "tiny", *args, "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    paths = [row["path"] for row in read_rows(tmp_path / "p.csv")]
    assert paths == [str(new / "deeper" / "a.PNG"), str(new / "b.png"), str(new / "deeper" / "deepest" / "c.jpeg")]


def test_without_out_the_csv_goes_to_standard_output_and_the_summary_to_standard_error(in_project, capsys):
    code, out, err = run(["predict", "--cell", in_project["network"], "source/dark"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 12 and rows[0]["path"] == str(Path("source/dark/img00.png"))
    assert err.startswith("predicted 12 image(s) with cell ") and err.count("\n") == 1


def test_the_console_script_entry_point_is_declared():
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '[project.scripts]\ntransfergrid = "transfergrid.cli:main"' in pyproject
    with redirect_stdout(io.StringIO()) as help_text:
        assert cli.main(["--help"]) == 0
    assert "predict" in help_text.getvalue()


# ----------------------------------------------------------------------------------------------
# The default cell: the validation-best of the dataset


def test_without_a_cell_the_datasets_validation_best_cell_is_used(in_project, capsys):
    summary = pd.read_csv("results/summary.csv")
    best = summary.iloc[int(summary["val_acc"].to_numpy().argmax())]
    code, out, _ = run(["predict", "--dataset", "tiny", "source/mid", "--out", "mid.csv"], capsys)
    assert code == 0
    assert f" with cell {best['candidate_dir']} " in out
    predictions = predict_images("tiny", [Path("source/mid")])
    assert predictions.cell.candidate_dir == Path(best["candidate_dir"])


def write_summary(project: Path, rows: list[dict]) -> None:
    (project / "results").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(project / "results" / "summary.csv", index=False)


def test_the_default_cell_is_chosen_by_validation_never_by_test(project, tmp_path):
    """Ties go to the first row; a better test score never wins."""
    network, frozen = (str(project["root"] / project[cell]) for cell in ("network", "frozen"))
    row = {"dataset": "tiny", "cell_dir": network, "val_acc": 0.9, "test_top1": 0.5}
    other = {**row, "cell_dir": frozen, "test_top1": 0.99}
    elsewhere = {**row, "dataset": "else", "cell_dir": "nowhere", "val_acc": 1.0}
    write_summary(tmp_path, [elsewhere, row, other])
    assert best_cell("tiny", tmp_path) == Path(network)
    write_summary(tmp_path, [row, {**other, "val_acc": 0.91, "test_top1": 0.1}, {**other, "val_acc": float("nan")}])
    assert best_cell("tiny", tmp_path) == Path(frozen)


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming it


def fails_with(argv, capsys, *expected: str) -> str:
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    assert err.startswith("transfergrid: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    return err


def test_unknown_dataset_lists_the_known_ones(in_project, capsys):
    fails_with(
        ["predict", "--dataset", "nope", "source"],
        capsys,
        "unknown dataset 'nope': there is no results/datasets/nope/classes.json; known datasets: tiny",
    )


def test_unreadable_image_is_named(in_project, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path("source/dark/img00.png").read_bytes()[:200])
    for bad in (broken, truncated):
        fails_with(
            ["predict", "--dataset", "tiny", "source/dark", str(bad), "--out", "x.csv"],
            capsys,
            f"unreadable image {bad}: ",
        )
        assert not Path("x.csv").exists()


def test_no_images_and_missing_paths_are_named(in_project, tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
    fails_with(
        ["predict", "--dataset", "tiny", str(tmp_path / "empty")], capsys, f"no images found in {tmp_path / 'empty'}"
    )
    fails_with(
        ["predict", "--dataset", "tiny", str(tmp_path / "absent.png")],
        capsys,
        f"no such image file or folder: {tmp_path / 'absent.png'}",
    )


def test_a_cell_path_without_a_trained_model_is_named(in_project, tmp_path, capsys):
    fails_with(
        ["predict", "--cell", str(tmp_path / "nowhere"), "source"],
        capsys,
        f"cell {tmp_path / 'nowhere'} does not exist",
    )
    fails_with(["predict", "--cell", str(tmp_path), "source"], capsys, f"{tmp_path} holds no trained model")
    unevaluated = tmp_path / "cell"
    shutil.copytree(chosen_candidate(in_project["network"]), unevaluated / "lr1.0")
    fails_with(["predict", "--cell", str(unevaluated), "source"], capsys, f"cell {unevaluated} has no selection.json")
    (unevaluated / "lr1.0" / "model.pt").write_bytes(b"garbage")
    fails_with(
        ["predict", "--cell", str(unevaluated / "lr1.0"), "source"], capsys, "model.pt is not a readable model file"
    )


def test_a_diverged_candidate_is_named_with_its_reason(in_project, tmp_path, capsys):
    settings = cell_config(dataset="tiny", strategy="full", epochs=1)
    settings = settings.replace(optimizer=replace(settings.optimizer, lr=1e6))
    inputs = CellInputs(
        Path("results/splits/tiny.csv"),
        Path("results/datasets/tiny/classes.json"),
        Path(f"results/cache/tiny/{SIZE}px.npy"),
    )
    result = train_candidate(settings, inputs, tmp_path / "lr1.0", log=QUIET)
    assert result.summary["status"] == "diverged"
    fails_with(
        ["predict", "--cell", str(tmp_path / "lr1.0"), "source"],
        capsys,
        f"{tmp_path / 'lr1.0' / 'model.pt'} holds no trained model: its training diverged (",
    )


def test_a_head_whose_base_weights_are_gone_is_named(in_project, capsys):
    weights = Path(in_project["weights_file"])
    moved = weights.with_name("moved.pt")
    weights.rename(moved)
    try:
        fails_with(
            ["predict", "--cell", in_project["frozen"], "source"],
            capsys,
            f"frozen base whose weights {weights} are missing",
        )
    finally:
        moved.rename(weights)


def test_a_cell_of_another_dataset_or_of_changed_classes_is_refused(in_project, tmp_path, capsys, monkeypatch):
    other = Path("results/datasets/other")
    other.mkdir(exist_ok=True)
    shutil.copy("results/datasets/tiny/classes.json", other / "classes.json")
    try:
        fails_with(
            ["predict", "--dataset", "other", "--cell", in_project["network"], "source"],
            capsys,
            "was trained on dataset 'tiny', not 'other'",
        )
    finally:
        shutil.rmtree(other)
    changed = tmp_path / "results" / "datasets" / "tiny"
    changed.mkdir(parents=True)
    info = read_json("results/datasets/tiny/classes.json")
    (changed / "classes.json").write_text(json.dumps({**info, "classes": ["dark", "mid"]}))
    cell = str(in_project["root"] / in_project["network"])
    monkeypatch.chdir(tmp_path)
    fails_with(["predict", "--cell", cell, str(in_project["root"] / "source")], capsys, "the dataset changed since")


def test_missing_summary_or_dataset_and_cell_are_named(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    images = str(project["root"] / "source" / "dark")
    shutil.copytree(project["root"] / "results" / "datasets", tmp_path / "results" / "datasets")
    fails_with(["predict", "--dataset", "tiny", images], capsys, "there is no results/summary.csv")
    write_summary(tmp_path, [{"dataset": "else", "cell_dir": "c", "val_acc": 1.0}])
    fails_with(["predict", "--dataset", "tiny", images], capsys, "holds no cell of dataset 'tiny' (its datasets: else)")
    fails_with(["predict", images], capsys, "name the dataset (--dataset) or a cell (--cell)")
