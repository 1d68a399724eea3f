"""Resumable training: the state of a fit written after every epoch, so a job killed or preempted
(SIGKILL, a node failure, a SLURM requeue) continues from its last finished epoch when it runs
again, and ends with the same result as an uninterrupted run.

The checkpoint holds everything the rest of the fit depends on: the model, the optimizer (its
momentum), the epoch and phase, the best epoch so far and its weights, the history, and every
random state (Python, NumPy, torch on the CPU and on CUDA, the batch generator that shuffles and
augments). It is written atomically, under ``results/checkpoints/`` where Snakemake does not look
(it deletes a failed job's declared outputs, never this), and removed once the job's outputs are
complete. It records the cell's settings: a checkpoint of other settings is never resumed.

``TRANSFERGRID_FAILPOINT=<point>:<epoch>`` kills the process with SIGKILL at that point, which is
how the tests interrupt a job exactly mid-epoch, between epochs or in the middle of a checkpoint
write; nothing sets it otherwise.
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path


def failpoint(point: str, epoch: int) -> None:
    """Die here, as a SIGKILL would, when the environment names this point (tests only)."""
    if os.environ.get("TRANSFERGRID_FAILPOINT") == f"{point}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


def random_states(generator: torch.Generator | None) -> dict:
    state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (state[0], torch.from_numpy(state[1].copy()), *state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "batches": generator.get_state() if generator is not None else None,
    }


def restore_random_states(states: dict, generator: torch.Generator | None) -> None:
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if generator is not None and states["batches"] is not None:
        generator.set_state(states["batches"])


@dataclass(frozen=True)
class Checkpoint:
    """Where one job's fit is checkpointed, and the settings and code version it belongs to."""

    path: Path
    settings: dict
    code_version: str = ""  # the job's `code` parameter (codeversion.py)

    def load(self, log=print) -> dict | None:
        """The saved state, or None: no checkpoint, or one of other settings or another code
        version (then removed)."""
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        for key, what in (("settings", "settings"), ("code_version", "code")):
            if state.get(key) != getattr(self, key):
                log(f"checkpoint {self.path} belongs to other {what}: starting afresh")
                self.remove()
                return None
        return state

    def save(self, state: dict) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({**state, "settings": self.settings, "code_version": self.code_version}, tmp)
            failpoint("checkpoint_write", state["epoch"])  # the file is written, not yet in place

    def remove(self) -> None:
        """Delete the checkpoint and the folders it leaves empty (up to ``results/checkpoints``)."""
        self.path.unlink(missing_ok=True)
        folder = self.path.parent
        while folder.name != "checkpoints" and folder != folder.parent:
            try:
                folder.rmdir()  # only an empty folder: another job's checkpoint keeps its parents
            except OSError:
                break
            folder = folder.parent
