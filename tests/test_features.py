"""The feature cache: extraction equals the frozen network's forward pass, and training a head on
cached features is the same experiment as training it through the frozen network."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
from helpers import cell_config

from transfergrid.backbones import PretrainedCfg
from transfergrid.batches import FeatureBatches, TensorBatches, feature_batches
from transfergrid.features import (
    FeatureSource,
    HeadOnlyModel,
    build_feature_cache,
    extract_features,
    head_only_model,
    head_state_into_model,
    load_features,
)
from transfergrid.grid import uses_feature_cache
from transfergrid.heads import HEADS
from transfergrid.imagecache import write_cache
from transfergrid.logreg import fit_logreg_on_features
from transfergrid.loop import fit
from transfergrid.model import build_model
from transfergrid.strategies import Phase, parse_strategy

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORM = PretrainedCfg(32, MEAN, STD)
CPU = torch.device("cpu")


def uint8_images(n=40, channels=3, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)


def normalised(images):
    x = images.float() / 255
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model(cell_config(strategy="frozen"), 3, None)


@pytest.mark.parametrize("channels", [3, 1])
def test_extraction_equals_the_backbone_on_normalised_images(resnet, channels):
    backbone = resnet.backbone.train()
    images = uint8_images(channels=channels)
    features = extract_features(backbone, images, NORM, batch_size=16, device=CPU, chunk_rows=24)
    assert backbone.training  # the caller's mode is restored
    backbone.eval()
    with torch.no_grad():
        x = normalised(images)
        pooled, spatial = backbone(x), backbone.global_average(backbone.forward_features(x))
    assert features["pooled"].shape == (40, backbone.num_features) and features["pooled"].dtype == torch.float32
    assert features["spatial"].shape == (40, backbone.feature_channels)
    assert torch.allclose(features["pooled"], pooled, atol=1e-5)
    assert torch.allclose(features["spatial"], spatial, atol=1e-5)
    some = extract_features(backbone, images, NORM, 16, CPU, rows=np.array([5, 2, 30]))
    assert torch.allclose(some["pooled"], pooled[[5, 2, 30]], atol=1e-5)


def test_build_feature_cache_uses_the_cells_weights_file(tmp_path):
    torch.manual_seed(1)
    weights = tmp_path / "weights.pt"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, weights)
    images, labels = uint8_images(n=20), torch.arange(20) % 3
    write_cache(images, labels, tmp_path / "cache.npy")
    out = tmp_path / "features" / "resnet18.pt"
    summary = build_feature_cache(
        FeatureSource("resnet18", "imagenet", weights),
        tmp_path / "cache.npy",
        out,
        batch_size=8,
        threads=1,
        device="cpu",
        log=lambda m: None,
    )
    payload = load_features(out)
    assert summary["num_images"] == 20 and not list(out.parent.glob(".*tmp*"))
    assert torch.equal(payload["labels"], labels) and payload["backbone"] == "resnet18"
    backbone = build_model(cell_config(weights="imagenet"), 3, weights).backbone.eval()
    with torch.no_grad():
        expected = backbone(normalised(images))
    assert torch.allclose(payload["pooled"], expected, atol=1e-5)
    assert payload["spatial"].shape == (20, backbone.feature_channels)


def test_feature_batches_follow_tensor_batches_order():
    images, labels = uint8_images(n=30, size=4), torch.arange(30)
    rows = np.arange(3, 29)
    features = labels.float()[:, None].repeat(1, 2)
    for seed in (7, None):
        tensors = TensorBatches(images, labels, rows, 8, CPU, NORM, seed=seed)
        cached = FeatureBatches(features, labels, rows, 8, CPU, seed=seed)
        assert len(cached) == len(tensors) == 26
        for _ in range(2):  # two epochs: the generator advances the same way
            pairs = list(zip(tensors, cached, strict=True))
            for (_, expected), (x, y) in pairs:
                assert torch.equal(y, expected) and torch.equal(x[:, 0], expected.float())
    assert next(y.tolist() for _, y in FeatureBatches(features, labels, rows, 8, CPU)) == list(range(3, 11))


@pytest.mark.parametrize("head", ["linear", "mlp", "svm", "gap"])
def test_training_on_cached_features_is_training_through_the_frozen_network(head):
    """Same init, same seed, two epochs: the head's weights agree, as do the counts fit reports."""
    cell = cell_config(
        strategy="frozen", head=head, head_options={"hidden": [16]} if head == "mlp" else {}, epochs=2, seed=3
    )
    cell = cell.replace(optimizer=replace(cell.optimizer, lr=0.01))
    assert uses_feature_cache(cell.strategy, cell.augment, cell.train_bn)
    images, labels = uint8_images(n=40), torch.arange(40) % 3
    train_rows, val_rows = np.arange(0, 32), np.arange(32, 40)
    torch.manual_seed(0)
    network = build_model(cell, 3, None)
    cached = copy.deepcopy(network)
    initial = copy.deepcopy(network.head.state_dict())
    strategy = parse_strategy("frozen")
    quiet = lambda message: None  # noqa: E731

    def tensor_batches(rows, seed):
        return TensorBatches(images, labels, rows, cell.batch_size, CPU, NORM, seed=seed)

    torch.manual_seed(123)  # dropout draws from the global generator in both runs
    through = fit(network, strategy, tensor_batches(train_rows, 3), tensor_batches(val_rows, None), cell, quiet)

    payload = {**extract_features(cached.backbone, images, NORM, 16, CPU), "labels": labels}
    head_model = head_only_model(cached)
    torch.manual_seed(123)
    on_features = fit(
        head_model,
        strategy,
        feature_batches(cell, payload, train_rows, CPU, True),
        feature_batches(cell, payload, val_rows, CPU, False),
        cell,
        quiet,
    )

    trained, reference = cached.head.state_dict(), network.head.state_dict()
    assert not torch.allclose(reference[next(iter(reference))], initial[next(iter(initial))], atol=1e-3)
    for key in reference:
        assert torch.allclose(trained[key].float(), reference[key].float(), atol=1e-5), key
    assert on_features.parameter_counts == through.parameter_counts
    assert on_features.best_epoch == through.best_epoch
    losses = [[round(row["train_loss"], 4) for row in result.history] for result in (on_features, through)]
    assert losses[0] == losses[1]

    # The head's best state becomes a full TransferModel state dict, as the evaluation rule loads it.
    torch.manual_seed(0)
    saved = head_state_into_model(build_model(cell, 3, None), on_features.best_state).state_dict()
    assert saved.keys() == through.best_state.keys()
    for key, value in through.best_state.items():
        assert torch.allclose(saved[key].float(), value.float(), atol=1e-5), key


def test_head_only_model_refuses_to_train_the_base_and_counts_it():
    model = HeadOnlyModel(torch.nn.Linear(4, 2), frozen_params=100, num_stages=5)
    model.apply_phase(parse_strategy("frozen").phase(0, 5))
    assert model.parameter_counts() == {"trainable_params": 10, "frozen_params": 100, "total_params": 110}
    with pytest.raises(ValueError, match="frozen"):
        model.apply_phase(Phase(frozen_stages=0))


def test_only_frozen_unaugmented_cells_use_the_cache():
    assert uses_feature_cache("frozen", "none", False)
    assert not uses_feature_cache("full", "none", False)
    assert not uses_feature_cache("frozen", "standard", False)
    assert not uses_feature_cache("frozen", "none", True)


def test_logreg_on_cached_features_uses_the_pooled_rows():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    pooled = 4 * torch.nn.functional.one_hot(labels, 3).float() + torch.randn(60, 3, generator=generator)
    payload = {
        "pooled": torch.cat([pooled, torch.randn(60, 5, generator=generator)], 1),
        "spatial": torch.zeros(60, 2),
        "labels": labels,
    }
    assert HEADS["logreg"].input == "pooled"
    linear, _chosen, val_acc = fit_logreg_on_features(
        payload, np.arange(40), np.arange(40, 60), 3, {"C": [0.1, 1.0]}, seed=0
    )
    assert linear.in_features == 8 and set(val_acc) == {0.1, 1.0}
    assert (linear(payload["pooled"][40:]).argmax(1) == labels[40:]).float().mean() > 0.9
