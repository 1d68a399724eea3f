"""inception_v3 cells: native 299 px input and the auxiliary classifier in the training loss only."""

import numpy as np
import pytest
import torch
from helpers import cell_config, snapshot
from torch import nn

from transfergrid.backbones import PretrainedCfg
from transfergrid.batches import TensorBatches
from transfergrid.grid import image_size
from transfergrid.loop import train_one_epoch
from transfergrid.model import AUX_LOSS_WEIGHT, build_model
from transfergrid.strategies import parse_strategy


@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    cell = cell_config(backbone="inception_v3", image_size=299, batch_size=4)
    return cell, build_model(cell, num_classes=3, weights_file=None)


def batches_299():
    images = torch.randint(0, 256, (4, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return TensorBatches(
        images,
        torch.tensor([0, 1, 2, 0]),
        np.arange(4),
        4,
        torch.device("cpu"),
        PretrainedCfg(299, (0.5,) * 3, (0.5,) * 3),
        seed=0,
    )


def test_inception_cells_use_299_px_unless_configured():
    config = {"train": {"image_size": None}}
    assert image_size(config, "inception_v3", "none") == 299
    assert image_size(config, "inception_v3", "imagenet") == 299


def test_training_loss_adds_the_auxiliary_logits_with_weight_0_4(inception):
    _cell, model = inception
    model.apply_phase(parse_strategy("full").phase(0, model.num_stages))
    images, labels = next(iter(batches_299()))
    model.train()
    torch.manual_seed(3)
    logits, aux_logits = model(images)
    loss_fn = nn.CrossEntropyLoss()
    expected = loss_fn(logits, labels) + AUX_LOSS_WEIGHT * loss_fn(aux_logits, labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # measure the loss, change nothing
    torch.manual_seed(3)
    measured, *_ = train_one_epoch(model, batches_299(), optimizer, loss_fn)
    assert measured == pytest.approx(expected.item(), rel=1e-4)
    assert aux_logits.shape == (4, 3)


def test_auxiliary_head_trains_and_is_ignored_at_eval(inception):
    _cell, model = inception
    before = snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, batches_299(), optimizer, nn.CrossEntropyLoss())
    assert not torch.equal(before["aux_head.weight"], model.state_dict()["aux_head.weight"])
    model.eval()
    with torch.no_grad():
        output = model(next(iter(batches_299()))[0])
    assert isinstance(output, torch.Tensor) and output.shape == (4, 3)
