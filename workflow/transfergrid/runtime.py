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
    resolved = resolve_device(device)
    configure_device(resolved)
    return resolved


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bfloat16 matrix products in hardware (read from /proc/cpuinfo's flags
    through torch; elsewhere fp32 is faster than emulated bf16)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(setting: str, device: torch.device) -> str:
    """`auto` -> bf16 where the hardware does it natively, else fp32; explicit settings stay."""
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    """The autocast context of a precision: bfloat16 compute for matrix products and convolutions,
    float32 for reductions and the loss (torch's own autocast lists)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def configure_device(device: torch.device) -> None:
    """Fast kernels where they do not change what is learned: cuDNN picks the fastest convolution
    algorithm for the (fixed) input size; TF32 matrix products on GPUs that have them."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
