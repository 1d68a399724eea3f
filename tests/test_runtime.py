"""What runtime.prepare_model does to a network for its device and precision (on the CPU; the CUDA
side of the depthwise rule also runs in test_gpu.py on a GPU machine)."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transfergrid.runtime import prepare_model, standard_order_depthwise_convolutions

ROOT = Path(__file__).resolve().parents[1]


def depthwise_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 1),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        torch.nn.Conv2d(8, 4, 1),
    )


def test_standard_order_depthwise_keeps_what_the_network_computes():
    net = depthwise_net().to(memory_format=torch.channels_last)
    reference = depthwise_net().to(memory_format=torch.channels_last)
    keys = list(net.state_dict())
    standard_order_depthwise_convolutions(net)
    assert net[1].weight.stride() == (9, 9, 3, 1)  # reordered in place: still the same parameter
    net.to(memory_format=torch.channels_last)  # as feature extraction does: reordered again when used
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(x)
    out = net(x)
    out.sum().backward()  # the weight reordered under inference_mode still trains
    torch.testing.assert_close(out, reference(x))
    assert net[1].weight.stride() == (9, 9, 3, 1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert list(net.state_dict()) == keys and net[1].weight.grad is not None
    assert "forward" not in net[0].__dict__ and "forward" not in net[2].__dict__  # dense layers untouched


def test_prepare_model_on_a_cpu_changes_only_bf16_training():
    fp32 = prepare_model(depthwise_net(), "fp32", torch.device("cpu"))
    assert not any("forward" in module.__dict__ for module in fp32.modules())
    bf16 = prepare_model(depthwise_net(), "bf16", torch.device("cpu"))
    assert "forward" in bf16[1].__dict__ and "forward" not in bf16[0].__dict__


# A 64 MiB block, then glibc's mallinfo2: hblks counts the blocks malloc holds as separate mmaps.
MMAP_PROBE = """
import ctypes, sys
from transfergrid.runtime import keep_freed_memory

class MallInfo2(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
took = keep_freed_memory() if sys.argv[1] == "keep" else None
before = libc.mallinfo2().hblks
block = bytearray(64 * 2**20)
print(took, libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_takes_large_blocks_from_the_heap():
    def probe(mode: str) -> list[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
        run = subprocess.run([sys.executable, "-c", MMAP_PROBE, mode], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr
        return run.stdout.split()

    assert probe("default") == ["None", "1"]  # glibc's default: a block this size is its own mmap
    assert probe("keep") == ["True", "0"]
