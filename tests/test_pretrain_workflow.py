"""End-to-end `pretrain:` weights: real Snakemake trains a backbone on digits 0-4 (model A), then two
target cells on a folder of digits 5-7 start from it with a new 3-class head (model B)."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from test_workflow import grid_config, planned_jobs, snakemake, write_config

from transfergrid.evaluate import load_trained_network
from transfergrid.io import read_json
from transfergrid.naming import Cell

pytestmark = pytest.mark.e2e

IMAGES_PER_CLASS = 8
SOURCE = "pretrain:digits04"
TARGET_LABELS = (5, 6, 7)


def write_target_folder(root):
    """Real digits of classes the source never saw, as PNG files in class folders."""
    digits = load_digits()
    for label in TARGET_LABELS:
        for i, index in enumerate(np.flatnonzero(digits.target == label)[:IMAGES_PER_CLASS]):
            path = root / f"digit{label}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[index] * 15).astype(np.uint8), mode="L").save(path)


def cell_dir(workdir, strategy):
    return workdir / Cell("photos", "1.0", "resnet18", SOURCE, strategy, "linear", 0).path


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pretrain")
    write_target_folder(workdir / "photos")
    config = grid_config(
        {
            "digits": {"source": "builtin", "name": "digits", "max_per_class": IMAGES_PER_CLASS},
            "photos": {"source": "folder", "path": str(workdir / "photos")},
        }
    )
    config["grid"].update(
        datasets=["photos"], backbones=[{"name": "resnet18", "weights": [SOURCE]}], strategies=["full", "frozen"]
    )
    config["pretrain"] = {"digits04": {"dataset": "digits", "classes": [0, 1, 2, 3, 4]}}
    write_config(workdir, config)
    planned = planned_jobs(workdir)
    snakemake(workdir)
    return workdir, config, planned


def test_one_pretraining_serves_both_target_cells(pretrained_run):
    workdir, _, planned = pretrained_run
    assert (
        planned["pretrain_backbone"] == 1
        and planned["train_candidate"] == 1
        and planned["fit_frozen_pretrained_photos"] == 1
    )
    assert len(list((workdir / "results/logs/pretrain_backbone").glob("*.log"))) == 1
    for strategy in ("full", "frozen"):
        assert (cell_dir(workdir, strategy) / "lr1.0" / "train.json").exists()
        assert read_json(cell_dir(workdir, strategy) / "lr1.0" / "cell.json")["weights"] == SOURCE
    assert planned_jobs(workdir) == {}


def test_the_target_starts_from_the_pretrained_backbone_with_its_own_head(pretrained_run):
    workdir, _, _ = pretrained_run
    weights = torch.load(workdir / "results/weights/resnet18/pretrain-digits04.pt", weights_only=True)
    assert weights["pretrain"]["classes"] == ["0", "1", "2", "3", "4"]
    assert weights["pretrain"]["num_train"] == 5 * 4  # 8 per class, a quarter each to val and test
    assert not any(k.startswith("fc.") for k in weights["state_dict"])
    for strategy in ("full", "frozen"):
        model = torch.load(cell_dir(workdir, strategy) / "lr1.0" / "model.pt", weights_only=True)
        # a frozen base's head reads standardised features: its linear layer is head.1
        key = "head.1.weight" if strategy == "frozen" else "head.weight"
        assert model["state_dict"][key].shape == (len(TARGET_LABELS), 512)
        assert model["classes"] == [f"digit{label}" for label in TARGET_LABELS]
    # A frozen cell saves its head; rebuilt, its base is the pretrained backbone, tensor for tensor
    # (BatchNorm statistics included).
    frozen, _, _ = load_trained_network(
        cell_dir(workdir, "frozen") / "lr1.0" / "model.pt", workdir / "results/weights/resnet18/pretrain-digits04.pt"
    )
    for key, value in weights["state_dict"].items():
        assert torch.equal(frozen.backbone.net.state_dict()[key], value), key


def test_changing_the_pretraining_reruns_it_and_its_targets(pretrained_run):
    workdir, config, _ = pretrained_run
    edited = copy.deepcopy(config)
    edited["pretrain"]["digits04"]["epochs"] = 2
    write_config(workdir, edited)
    try:
        planned = planned_jobs(workdir)
    finally:
        write_config(workdir, config)
    assert (
        planned["pretrain_backbone"] == 1
        and planned["train_candidate"] == 1
        and planned["fit_frozen_pretrained_photos"] == 1
    )
    assert "obtain_dataset" not in planned and "cache_images" not in planned
