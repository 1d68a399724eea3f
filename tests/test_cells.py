"""A cell trained on cached features is the same network that evaluation rebuilds."""

import json

import pandas as pd
import pytest
import torch
from helpers import cell_config

from transfergrid.cell import CellInputs, train_cell
from transfergrid.evaluate import load_trained_model
from transfergrid.features import FeatureSource, build_feature_cache
from transfergrid.model import build_model
from transfergrid.split import make_split


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
    torch.save({"images": images, "labels": labels}, tmp_path / "cache.pt")
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
    build_feature_cache(source, root / "cache.pt", out, batch_size=8, device="cpu", log=lambda m: None)
    return out


def inputs(root, features):
    return CellInputs(
        split=root / "split.csv", classes=root / "classes.json", cache=root / "cache.pt", features=features
    )


def test_frozen_scratch_cell_on_features_saves_the_network_it_validated(tiny_dataset):
    cell = cell_config(strategy="frozen", seed=2, epochs=2)
    summary = train_cell(
        cell, inputs(tiny_dataset, features_for_seed(tiny_dataset, 2)), tiny_dataset / "cell", log=lambda m: None
    )
    assert summary["fit"] == "fit_on_features"
    model, _, _ = load_trained_model(tiny_dataset / "cell" / "model.pt")
    reference = build_model(cell, 3, None)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in reference.backbone.state_dict().items())


def test_features_of_another_random_base_are_refused(tiny_dataset):
    cell = cell_config(strategy="frozen", seed=1, epochs=1)
    with pytest.raises(RuntimeError, match="do not match the cell's backbone"):
        train_cell(
            cell, inputs(tiny_dataset, features_for_seed(tiny_dataset, 0)), tiny_dataset / "cell", log=lambda m: None
        )
    assert not (tiny_dataset / "cell" / "model.pt").exists()
