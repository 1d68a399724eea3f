"""Cells end to end in-process: learning-rate candidates, selection on validation, the test split
touched once, frozen heads on cached features rebuilt as the network that evaluation would run,
and diverging candidates that never show a number."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from helpers import cell_config

from transfergrid.batches import feature_batches, make_batches
from transfergrid.cell import CellInputs, train_candidate
from transfergrid.errors import TransferGridError
from transfergrid.evaluate import (
    choose_candidate,
    evaluate_frozen_group,
    evaluate_network_cell,
    load_trained_model,
    load_trained_network,
)
from transfergrid.features import FeatureSource, build_feature_cache, load_features
from transfergrid.frozen import FrozenCandidate, fit_frozen_group
from transfergrid.grid import candidate_settings
from transfergrid.imagecache import load_cache, write_cache
from transfergrid.loop import predict
from transfergrid.model import build_model
from transfergrid.split import make_split, read_split, split_rows

QUIET = lambda message: None  # noqa: E731


def test_random_base_is_a_pure_function_of_the_cell_seed():
    cell = cell_config(seed=5)
    first = build_model(cell, 3, None).backbone.state_dict()
    torch.rand(1000)  # whatever consumed the global generator in between
    second = build_model(cell, 3, None).backbone.state_dict()
    other = build_model(cell_config(seed=6), 3, None).backbone.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


@pytest.fixture
def tiny_dataset(tmp_path):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(36) % 3
    images = (torch.randint(0, 60, (36, 1, 32, 32), generator=generator) + labels.view(-1, 1, 1, 1) * 80).to(
        torch.uint8
    )
    write_cache(images, labels, tmp_path / "cache.npy")
    manifest = pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(36)],
            "label": labels.numpy(),
            "class_name": labels.numpy().astype(str),
            "split": "",
        }
    )
    make_split(manifest, 0.25, 0.25, seed=0).to_csv(tmp_path / "split.csv", index=False)
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["0", "1", "2"]}))
    return tmp_path


def features_for_seed(root, seed):
    out = root / f"features-seed{seed}.pt"
    source = FeatureSource("resnet18", "none", None, init_seed=seed)
    build_feature_cache(source, root / "cache.npy", out, batch_size=8, device="cpu", log=QUIET)
    return out


def fit_frozen(root, cell, features, multipliers=("1.0",)):
    candidates = [
        FrozenCandidate(candidate_settings(cell, m), root / "cell" / f"lr{m}", weights_file=None) for m in multipliers
    ]
    return fit_frozen_group(candidates, features, root / "split.csv", root / "classes.json", log=QUIET)


def test_a_frozen_head_on_features_rebuilds_as_the_network_it_validated(tiny_dataset):
    """The head-only model of a frozen cell, rebuilt with its base, gives the logits the head gave
    on the cached features: validation, test and predict all measure the same network."""
    cell = cell_config(strategy="frozen", seed=2, epochs=2, features=True)
    features = features_for_seed(tiny_dataset, 2)
    (result,) = fit_frozen(tiny_dataset, cell, features)
    assert result.summary["status"] == "trained" and result.summary["fit"] == "fit_head_by_sgd"
    saved, _, _ = load_trained_network(tiny_dataset / "cell" / "lr1.0" / "model.pt")
    reference = build_model(cell, 3, None)
    assert all(torch.equal(v, saved.backbone.state_dict()[k]) for k, v in reference.backbone.state_dict().items())
    # What test evaluation and predict run: the same network with its batch norms folded.
    model, settings, _ = load_trained_model(tiny_dataset / "cell" / "lr1.0" / "model.pt")
    images, labels = load_cache(tiny_dataset / "cache.npy")
    rows = split_rows(read_split(tiny_dataset / "split.csv"), "val")
    cpu = torch.device("cpu")
    through_network, _ = predict(model, make_batches(settings, images, labels, rows, cpu, False))
    on_features, _ = predict(model.head, feature_batches(settings, load_features(features), rows, cpu, False))
    assert torch.allclose(through_network, on_features, atol=1e-4)


def test_features_of_another_random_base_are_refused(tiny_dataset):
    cell = cell_config(strategy="frozen", seed=1, epochs=1, features=True)
    with pytest.raises(TransferGridError, match="not from the cell's base"):
        fit_frozen(tiny_dataset, cell, features_for_seed(tiny_dataset, 0))
    assert not (tiny_dataset / "cell" / "lr1.0" / "model.pt").exists()


@pytest.fixture
def pretrained_features(tiny_dataset):
    """The feature cache of a pretrained base: one cache for every seed of the grid."""
    torch.manual_seed(1)
    weights = tiny_dataset / "weights.pt"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, weights)
    out = tiny_dataset / "features-pretrained.pt"
    source = FeatureSource("resnet18", "imagenet", weights)
    build_feature_cache(source, tiny_dataset / "cache.npy", out, batch_size=8, device="cpu", log=QUIET)
    return out, weights


def test_seeds_that_pose_the_same_closed_form_problem_share_one_fit(tiny_dataset, pretrained_features):
    """On a pretrained base's features the seeds of a logreg recipe fit the same rows with the same
    settings: the group solves it once, and each seed's files equal fitting that seed on its own.
    A head trained by gradient descent depends on its seed and is fitted for each."""
    features, weights = pretrained_features
    group, alone = tiny_dataset / "group", tiny_dataset / "alone"
    frozen = {"strategy": "frozen", "weights": "imagenet", "features": True}

    def fit(root, seeds, log=QUIET):
        candidates = [
            FrozenCandidate(
                candidate_settings(cell_config(head=h, seed=s, **frozen), "1.0"),
                root / f"{h}-seed{s}",
                weights_file=str(weights),
            )
            for h in ("logreg", "linear")
            for s in seeds
        ]
        split, classes = tiny_dataset / "split.csv", tiny_dataset / "classes.json"
        results = fit_frozen_group(candidates, features, split, classes, log=log)
        return {result.out_dir.name: result.summary for result in results}

    def saved(directory):
        model = torch.load(directory / "model.pt", weights_only=False)
        history = pd.read_csv(directory / "history.csv").drop(columns=["seconds", "train_seconds"])
        return model, history

    messages = []
    summaries = fit(group, (0, 1, 2), messages.append)
    fit(alone, (2,))
    first = str(group / "logreg-seed0")
    assert [summaries[f"logreg-seed{s}"].get("same_fit_as") for s in (0, 1, 2)] == [None, first, first]
    assert sum("the same closed-form fit as" in message for message in messages) == 2
    assert summaries["logreg-seed2"]["wall_seconds"] == summaries["logreg-seed0"]["wall_seconds"]
    assert not any("same_fit_as" in summaries[f"linear-seed{s}"] for s in (0, 1, 2))
    for head in ("logreg", "linear"):  # each seed's files as if fitted alone
        model, history = saved(group / f"{head}-seed2")
        model_alone, history_alone = saved(alone / f"{head}-seed2")
        assert model["cell"] == model_alone["cell"] and history.equals(history_alone)
        assert all(torch.equal(value, model_alone["state_dict"][key]) for key, value in model["state_dict"].items())
    # The seeds' logreg heads are one head; their linear heads are not.
    (logreg0, _), (logreg2, _) = saved(group / "logreg-seed0"), saved(group / "logreg-seed2")
    (linear0, _), (linear2, _) = saved(group / "linear-seed0"), saved(group / "linear-seed2")
    assert all(torch.equal(value, logreg2["state_dict"][key]) for key, value in logreg0["state_dict"].items())
    assert not torch.equal(linear0["state_dict"]["head.1.weight"], linear2["state_dict"]["head.1.weight"])


def write_candidate(directory, multiplier, status="trained", val_acc=0.5, val_loss=1.0):
    directory.mkdir(parents=True)
    settings = candidate_settings(cell_config(), multiplier)
    (directory / "cell.json").write_text(json.dumps(settings.to_dict()))
    summary = {"status": status, "best_val_acc": val_acc, "best_val_loss": val_loss, "best_epoch": 1}
    if status == "diverged":
        summary = {"status": status, "reason": "non-finite training loss at epoch 1: nan"}
    (directory / "train.json").write_text(json.dumps(summary))
    return directory


def test_the_chosen_candidate_is_the_validation_best(tmp_path):
    dirs = [
        write_candidate(tmp_path / "lr0.3", 0.3, val_acc=0.80, val_loss=0.5),
        write_candidate(tmp_path / "lr1.0", 1.0, val_acc=0.90, val_loss=0.7),
        write_candidate(tmp_path / "lr3.0", 3.0, val_acc=0.90, val_loss=0.6),  # tie on accuracy: lower loss wins
        write_candidate(tmp_path / "lr10.0", 10.0, status="diverged"),
    ]
    chosen, selection = choose_candidate(dirs)
    assert chosen == tmp_path / "lr3.0"
    assert selection["lr_multiplier"] == 3.0 and not selection["at_edge"]
    assert [c["status"] for c in selection["candidates"]] == ["trained"] * 3 + ["diverged"]
    _, edge = choose_candidate(dirs[:3])
    assert edge["at_edge"]  # the best rate is the largest one tried: the search should widen


def test_a_cell_whose_every_candidate_diverged_fails_in_one_line(tmp_path):
    dirs = [write_candidate(tmp_path / "lr1.0", 1.0, status="diverged")]
    with pytest.raises(TransferGridError) as error:
        choose_candidate(dirs)
    assert "every learning-rate candidate diverged" in str(error.value) and "\n" not in str(error.value)


def test_network_candidates_then_one_test_evaluation_of_the_chosen_one(tiny_dataset, monkeypatch):
    cell = cell_config(strategy="full", seed=0, epochs=1)
    inputs = CellInputs(tiny_dataset / "split.csv", tiny_dataset / "classes.json", tiny_dataset / "cache.npy")
    results = [
        train_candidate(candidate_settings(cell, m), inputs, tiny_dataset / "cell" / f"lr{m}", log=QUIET)
        for m in ("0.1", "1.0")
    ]
    assert [r.summary["status"] for r in results] == ["trained", "trained"]
    loaded = []
    import transfergrid.evaluate as evaluate_module

    original = evaluate_module.load_trained_model
    monkeypatch.setattr(
        evaluate_module, "load_trained_model", lambda path, **options: loaded.append(path) or original(path, **options)
    )
    metrics = evaluate_network_cell(
        [r.out_dir for r in results], tiny_dataset / "cache.npy", tiny_dataset / "split.csv", tiny_dataset / "cell"
    )
    best = max(results, key=lambda r: (r.summary["best_val_acc"], -r.summary["best_val_loss"]))
    assert loaded == [best.out_dir / "model.pt"]  # only the chosen candidate meets the test split
    assert metrics["selection"]["chosen"] == best.out_dir.name
    assert metrics["num_test"] == len(split_rows(read_split(tiny_dataset / "split.csv"), "test"))
    for name in ("test.json", "selection.json", "predictions.csv", "confusion.csv"):
        assert (tiny_dataset / "cell" / name).is_file()


def test_a_diverging_candidate_is_recorded_without_weights(tiny_dataset):
    cell = cell_config(strategy="full", seed=0, epochs=2)
    cell = cell.replace(optimizer=replace(cell.optimizer, lr=1e6))
    inputs = CellInputs(tiny_dataset / "split.csv", tiny_dataset / "classes.json", tiny_dataset / "cache.npy")
    result = train_candidate(cell, inputs, tiny_dataset / "cell" / "lr1.0", log=QUIET)
    assert result.summary["status"] == "diverged" and result.summary["diverged_epoch"] == 1
    assert "lower train.optimizer.lr" in result.summary["reason"]
    assert torch.load(result.out_dir / "model.pt", weights_only=True)["state_dict"] is None
    with pytest.raises(TransferGridError, match="holds no trained model"):
        load_trained_model(result.out_dir / "model.pt")


def test_a_candidates_log_names_the_precision_it_resolved_to(tiny_dataset):
    # precision "auto" is bf16 or fp32 depending on the CPU, so speeds differ between machines:
    # the log must say which one this job ran, the same as its train.json.
    cell = cell_config(strategy="full", seed=0, epochs=1).replace(precision="auto")
    inputs = CellInputs(tiny_dataset / "split.csv", tiny_dataset / "classes.json", tiny_dataset / "cache.npy")
    lines = []
    result = train_candidate(cell, inputs, tiny_dataset / "cell" / "lr1.0", log=lines.append)
    assert result.summary["precision"] in ("fp32", "bf16")
    assert f"device cpu, precision {result.summary['precision']};" in lines[0]


def test_frozen_group_evaluation_equals_the_network_on_test_images(tiny_dataset):
    cell = cell_config(strategy="frozen", seed=2, epochs=2, features=True)
    features = features_for_seed(tiny_dataset, 2)
    fit_frozen(tiny_dataset, cell, features, multipliers=("0.5", "1.0"))
    candidates = [tiny_dataset / "cell" / "lr0.5", tiny_dataset / "cell" / "lr1.0"]
    evaluate_frozen_group([(tiny_dataset / "cell", candidates)], features, tiny_dataset / "split.csv")
    on_features = json.loads((tiny_dataset / "cell" / "test.json").read_text())
    chosen = tiny_dataset / "cell" / on_features["selection"]["chosen"]
    evaluate_network_cell([chosen], tiny_dataset / "cache.npy", tiny_dataset / "split.csv", tiny_dataset / "net")
    through_network = json.loads((tiny_dataset / "net" / "test.json").read_text())
    assert on_features["top1"] == through_network["top1"]
    assert np.isclose(on_features["nll"], through_network["nll"], atol=1e-5)


def test_predict_returns_every_row_in_order_whatever_len_says():
    """predict fills buffers sized by len(batches); a plain list's len counts batches, not rows,
    so the buffers grow: every row still comes back, in order. No batches is an error."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    inputs, labels = torch.randn(10, 4), torch.arange(10) % 3
    batches = [(inputs[start : start + 3], labels[start : start + 3]) for start in range(0, 10, 3)]
    logits, predicted_labels = predict(model, batches)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(inputs))
    assert torch.equal(predicted_labels, labels)
    assert logits.dtype == torch.float32 and logits.shape == (10, 3)
    with pytest.raises(ValueError, match="no rows to predict on"):
        predict(model, [])
