"""What every compute job sets up before it touches a model: CPU threads, seeds and the device."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is an error, not a silent fallback."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def prepare_job(threads: int, device: str, seed: int | None = None) -> torch.device:
    """Set-up shared by every compute job: CPU threads, seeds, and the device to run on."""
    torch.set_num_threads(threads)
    if seed is not None:
        seed_everything(seed)
    return resolve_device(device)
