"""One GPU per concurrent job on a multi-GPU machine.

Snakemake's ``resources: gpu=1`` only counts GPUs: two GPU jobs running side by side both see
every device and both land on GPU 0 (Snakemake issue #281). ``lease_gpu`` gives each job its own
device: the job takes an exclusive lease on one device index for its lifetime and points
``CUDA_VISIBLE_DEVICES`` at it, so CUDA numbers that device 0 inside the job. Device indices are
nvidia-smi's (CUDA is told to number devices the same way, by PCI bus), or the entries of an
inherited ``CUDA_VISIBLE_DEVICES``, which then limits the candidates.

A lease is an ``fcntl.flock`` on ``<run_dir>/gpu-<index>.lock``. The kernel drops a flock when its
holder exits for any reason, SIGKILL included, so a crashed job's device is free again at once:
no stale lock files to clean up. The lock files are never deleted (deleting one while another job
waits on it would let two jobs hold "the same" lock). ``run_dir`` must be on a local disk and
shared by every job of the machine (e.g. ``DEFAULT_LEASE_DIR``): device indices are per machine,
and flock on a network filesystem may not be.

Under SLURM (``SLURM_JOB_ID`` set and ``CUDA_VISIBLE_DEVICES`` already set by the scheduler) the
scheduler has chosen the device: its assignment is kept and no lease is taken.

``CUDA_VISIBLE_DEVICES`` is read once, when CUDA initialises in the process; take the lease before
any ``torch.cuda`` call (``torch.cuda.is_available()`` included). This module never imports torch;
if torch is already imported and has initialised CUDA, ``lease_gpu`` raises instead of taking a
lease that could no longer take effect.

    with lease_gpu(DEFAULT_LEASE_DIR) as device:   # "1", or None without a GPU
        train(...)                                  # torch sees one GPU, the leased one
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# One lease directory per machine: every job of every workflow on it sees the same locks.
DEFAULT_LEASE_DIR = Path(tempfile.gettempdir()) / "transfergrid-gpu-leases"


class NoFreeGpu(RuntimeError):
    """Every device is leased and the caller asked not to wait (or waited past its timeout)."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def visible_devices(env: dict[str, str] | None = None) -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES; None when it is not set, [] when it hides every GPU."""
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    # CUDA stops at the first invalid entry; "-1" is the usual way to hide every device.
    valid = []
    for entry in entries:
        if entry.startswith("-"):
            break
        valid.append(entry)
    return valid


def discover_devices() -> list[str]:
    """This machine's GPUs as CUDA device identifiers (usually indices "0", "1", ...).

    An explicit CUDA_VISIBLE_DEVICES wins (the user restricted the job to those devices); else
    the indices nvidia-smi lists; else none.
    """
    visible = visible_devices()
    if visible is not None:
        return visible
    if shutil.which("nvidia-smi"):
        try:
            result = subprocess.run(
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return []
        return [line.strip() for line in result.stdout.splitlines() if line.strip().isdigit()]
    return []


def scheduler_assigned() -> bool:
    """True inside a SLURM job whose GPUs SLURM has already chosen (CUDA_VISIBLE_DEVICES set)."""
    return bool(os.environ.get("SLURM_JOB_ID")) and "CUDA_VISIBLE_DEVICES" in os.environ


def _check_cuda_not_initialised() -> None:
    torch = sys.modules.get("torch")  # only if the caller already imported it
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError(
            "lease_gpu() must run before CUDA is initialised in this process: CUDA has read "
            "CUDA_VISIBLE_DEVICES already, so the lease could not choose the device"
        )


def _lock_path(run_dir: Path, device: str) -> Path:
    return run_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on path, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    # Who holds it, for a person looking at the lock files; the lock itself is the flock.
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
    return fd


def _lock_first_free(run_dir: Path, candidates: Sequence[str]) -> tuple[str, int] | None:
    """(device, descriptor holding its lock) for the first device nobody leases, else None."""
    for device in candidates:
        fd = _try_lock(_lock_path(run_dir, device))
        if fd is not None:
            return device, fd
    return None


@contextlib.contextmanager
def lease_gpu(
    run_dir: str | os.PathLike,
    devices: Sequence[int | str] | None = None,
    wait: bool = True,
    poll: float = 0.5,
    timeout: float | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[str | None]:
    """Hold one GPU for the duration of the block; yields its identifier, or None without a GPU.

    devices: the machine's GPUs (indices or CUDA identifiers); None discovers them (see
    ``discover_devices``). Under SLURM with CUDA_VISIBLE_DEVICES set, the scheduler's assignment
    is kept and yielded as it is, without a lease. When every device is leased, waits (polling
    every ``poll`` seconds, logging "waiting for a free GPU") unless ``wait`` is False; raises
    NoFreeGpu if it may not wait or ``timeout`` seconds pass. CUDA_VISIBLE_DEVICES is restored
    when the block ends. One lease per job: a lease_gpu nested in another finds only the device
    the outer one holds (CUDA_VISIBLE_DEVICES) and would wait for it.
    """
    log = log or _stderr
    if scheduler_assigned():
        assigned = os.environ["CUDA_VISIBLE_DEVICES"]
        log(f"GPU chosen by SLURM (job {os.environ['SLURM_JOB_ID']}): CUDA_VISIBLE_DEVICES={assigned}")
        yield assigned or None
        return
    # Entries of an inherited CUDA_VISIBLE_DEVICES keep CUDA's numbering; nvidia-smi indices (and
    # configured ones) need CUDA to number devices as nvidia-smi does, by PCI bus.
    pci_order = devices is not None or visible_devices() is None
    candidates = [str(device) for device in devices] if devices is not None else discover_devices()
    if not candidates:
        yield None
        return
    _check_cuda_not_initialised()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    waiting_logged = False
    while (leased := _lock_first_free(run_dir, candidates)) is None:
        if not wait:
            raise NoFreeGpu(f"all {len(candidates)} GPU(s) are leased ({run_dir})")
        if timeout is not None and time.monotonic() - started > timeout:
            raise NoFreeGpu(f"no GPU became free within {timeout:g} s ({run_dir})")
        if not waiting_logged:
            log(f"waiting for a free GPU: all {len(candidates)} are leased ({run_dir})")
            waiting_logged = True
        time.sleep(poll)
    device, fd = leased
    previous = {name: os.environ.get(name) for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    try:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        if pci_order:
            os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        log(f"leased GPU {device} (CUDA_VISIBLE_DEVICES={device})")
        yield device
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
