"""What every compute job sets up before it touches a model: CPU threads, seeds and the device."""

from __future__ import annotations

import ctypes
import random

import numpy as np
import torch

from .folding import fold_batch_norms


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


def prepare_job(threads: int, device: str, seed: int | None = None, cudnn_benchmark: bool = False) -> torch.device:
    """Set-up shared by every compute job: CPU threads, seeds, and the device to run on."""
    prepare_process(threads)
    if seed is not None:
        seed_everything(seed)
    resolved = resolve_device(device)
    configure_device(resolved, cudnn_benchmark)
    return resolved


def prepare_process(threads: int) -> None:
    """What a compute job sets before anything else, whatever its device: its CPU threads and how
    its memory is reused (``prepare_job`` starts with it; a job that takes its device from a saved
    model calls it alone)."""
    torch.set_num_threads(threads)
    keep_freed_memory()


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory one batch frees for the next (training steps, inference).

    By default every block above the mmap threshold (128 KiB rising to at most 32 MiB) is a fresh
    mmap, unmapped when freed, and the heap's free top is returned to the kernel: each step's
    activations and gradients (tens of MiB a tensor at 224 px) then come back as new pages that
    the kernel faults in and zeroes. Measured on this project's 2-core CPU, efficientnet_lite0
    at 224 px, batch 32 (benchmarks/throughput.py): 16 train images/s, 22 of the job's 89 s in
    the kernel; with no mmap and no trimming 21 images/s, 2 s in the kernel, peak RSS 3.8 GB
    instead of 3.2 GB. The memory stays with the job, which ends with its cell. Returns whether the
    setting took (False where the C library is not glibc, e.g. macOS or musl: nothing changes).

    Every compute job sets it (``prepare_process``). Measured with benchmarks/memory.py's
    40,000-image cache: feature extraction 49.6-55.7 s instead of 57.4-65.2 s, peak RSS 1.6-1.7 GB
    instead of 1.4-1.5 GB; the test evaluation of 6,000 rows 14.4-14.7 s instead of 14.8-17.1 s,
    peak RSS 1.2-1.3 GB instead of 1.0-1.1 GB.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # -1 disables trimming (mallopt(3)); 0 mmaps: large blocks come from the heap and are reused.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))


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


def configure_device(device: torch.device, cudnn_benchmark: bool = False) -> None:
    """Fast kernels where they do not change what is learned: TF32 matrix products on GPUs that
    have them; with ``cudnn_benchmark``, cuDNN times its convolution algorithms for each input
    shape and keeps the fastest (train.cudnn_benchmark: it pays off in long jobs only)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak GPU memory that torch allocated since ``reset_peak_memory`` (None on a CPU, where the
    job's peak RSS is the operating system's to measure)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def float32_depthwise_convolutions(model: torch.nn.Module) -> torch.nn.Module:
    """Run the depthwise convolutions of ``model`` in float32 under a CPU bf16 autocast.

    oneDNN has no fast bf16 kernel for strided depthwise convolutions: measured here (2-core AVX-512
    BF16 CPU, batch 32) their backward pass takes 15x longer in bf16 than in fp32 (248 ms against
    16 ms for a 5x5 stride-2 layer of tf_efficientnet_lite0), which made bf16 slower than fp32 for
    the whole network. With them in float32 and the dense layers in bf16 a training step is 1.8x
    faster than plain fp32 (18.7 against 10.6 images/s). Inference keeps them in bf16, its fast
    path (94 images/s against 48). The module's parameters and state-dict keys are unchanged: only
    its forward runs outside the autocast when gradients are being recorded.
    """
    return _wrap_depthwise_forwards(model, lambda module: _float32_forward(module.forward))


def _float32_forward(forward):
    def float32_forward(x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # inference has no backward pass: bf16 is the fast path there
            return forward(x)
        with torch.autocast("cpu", enabled=False):
            return forward(x.float())

    return float32_forward


def is_depthwise(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _wrap_depthwise_forwards(model: torch.nn.Module, wrap) -> torch.nn.Module:
    """Replace the forward of every depthwise convolution of ``model`` by ``wrap(module)``."""
    for module in model.modules():
        if is_depthwise(module):
            module.forward = wrap(module)
    return model


def standard_order_depthwise_convolutions(model: torch.nn.Module) -> torch.nn.Module:
    """Run the depthwise convolutions of ``model`` in the standard (NCHW) memory order on a GPU.

    PyTorch gives every channels-last depthwise convolution to cuDNN, and cuDNN 9.10 and later
    compiles a kernel at run time for each new one (cudnn-frontend issue #1066). Measured on an
    H200 (cuDNN of torch 2.11+cu130): the first epoch of an efficientnet_lite0 cell took 16 s of
    training and 21 s in all, the next ones 0.4 s, and evaluating 269 test images took 6.2 s; a
    resnet18 cell, which has no depthwise convolution, took 0.8 s for its first epoch. In NCHW
    order PyTorch runs float32 and bfloat16 depthwise convolutions with its own kernel, which needs
    no compilation. The weight and the input of these layers are put in NCHW order when they are
    used (the weight once: ``model.to(memory_format=...)`` may have reordered it); the output goes
    back to channels-last for the dense layers around them. Parameters and state-dict keys stay.
    """
    return _wrap_depthwise_forwards(model, lambda module: _standard_order_forward(module, module.forward))


def _standard_order_forward(module: torch.nn.Conv2d, forward):
    standard_strides = torch.empty(module.weight.shape, device="meta").stride()

    def standard_order_weight() -> None:
        if module.weight.stride() != standard_strides:
            # A normal tensor even when first used under inference_mode, so training can follow.
            with torch.inference_mode(False), torch.no_grad():
                module.weight.data = module.weight.data.clone(memory_format=torch.contiguous_format)

    standard_order_weight()

    def standard_order_forward(x: torch.Tensor) -> torch.Tensor:
        standard_order_weight()  # again if the model was moved to channels-last since
        channels_last = x.dim() == 4 and not x.is_contiguous()
        out = forward(x.contiguous())
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    return standard_order_forward


def prepare_model(model: torch.nn.Module, precision: str, device: torch.device) -> torch.nn.Module:
    """What the device and the precision need of the model itself, for training and inference
    alike (see ``float32_depthwise_convolutions`` and ``standard_order_depthwise_convolutions``)."""
    if precision == "bf16" and device.type == "cpu":
        float32_depthwise_convolutions(model)
    if device.type == "cuda":
        standard_order_depthwise_convolutions(model)
    return model


def prepare_inference_model(
    model: torch.nn.Module, run, example: torch.Tensor, precision: str, device: torch.device, log=print
) -> torch.nn.Module:
    """``prepare_model`` for a network that only runs inference from now on: its batch norms are
    folded first (``folding.fold_batch_norms``, with ``run`` and ``example``), before
    ``prepare_model`` wraps forwards that a folded copy would not follow; then to ``device``."""
    return prepare_model(fold_batch_norms(model, run, example, log).to(device), precision, device)
