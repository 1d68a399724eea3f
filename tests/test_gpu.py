"""CUDA paths: skipped on machines without a GPU, run on a GPU workstation (and the lent H100)."""

import numpy as np
import pytest
import torch
from helpers import TEST_NORMALISATION, cell_config, changed_keys, snapshot

from transfergrid.batches import TensorBatches
from transfergrid.loop import fit
from transfergrid.model import build_model
from transfergrid.runtime import resolve_device
from transfergrid.strategies import parse_strategy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda_batches(train: bool):
    images = torch.randint(0, 256, (48, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(48) % 3
    return TensorBatches(
        images,
        labels,
        np.arange(48),
        16,
        torch.device("cuda"),
        TEST_NORMALISATION,
        augment="standard",
        seed=0 if train else None,
    )


def test_auto_and_cuda_pick_the_gpu():
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda").type == "cuda"


def test_batches_live_on_the_gpu_once():
    batches = cuda_batches(train=True)
    assert batches.images.is_cuda and batches.labels.is_cuda
    images, labels = next(iter(batches))
    assert images.is_cuda and images.shape == (16, 3, 32, 32) and labels.is_cuda


@pytest.mark.parametrize("strategy", ["frozen", "freeze:2", "full"])
def test_strategies_train_on_the_gpu(strategy):
    cell = cell_config(strategy=strategy, device="cuda")
    model = build_model(cell, 3, None).cuda()
    before = snapshot(model)
    result = fit(model, parse_strategy(strategy), cuda_batches(True), cuda_batches(False), cell, log=lambda m: None)
    changed = changed_keys(before, snapshot(model))
    frozen_prefixes = {
        "frozen": ("backbone.",),
        "freeze:2": ("backbone.net.conv1.", "backbone.net.bn1.", "backbone.net.layer1."),
        "full": (),
    }[strategy]
    assert not any(k.startswith(frozen_prefixes) for k in changed) if frozen_prefixes else changed
    assert ("head.1.weight" if strategy == "frozen" else "head.weight") in changed  # frozen: standardised input
    assert len(result.history) == cell.epochs


def test_depthwise_convolutions_leave_cudnn_on_the_gpu():
    """Channels-last depthwise convolutions go to cuDNN, which compiles a kernel per layer at run
    time; prepare_model keeps them in NCHW order, where PyTorch's own kernel runs them."""
    from transfergrid.runtime import prepare_model

    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32).cuda().to(memory_format=torch.channels_last)
    reference = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32).cuda()
    reference.load_state_dict(conv.state_dict())
    prepare_model(conv, "bf16", torch.device("cuda"))
    x = torch.randn(4, 32, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = conv(x)
        expected = reference(x)
    out.float().sum().backward()
    assert conv.weight.stride() == (9, 9, 3, 1) and conv.weight.grad is not None
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
