"""Glue between a Snakemake ``script:`` job and the package: log file, threads, one-line errors."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable

from .errors import TransferGridError
from .gpus import DEFAULT_LEASE_DIR, lease_gpu


def run_job(smk, main: Callable[[object, Callable[[str], None]], None]) -> None:
    """Run ``main(snakemake, log)`` with stdout/stderr going to the rule's log file.

    A TransferGridError (bad user input) becomes one line in the log and on stderr, without a
    traceback, and the job exits with status 1. Any other exception is a bug: its whole traceback
    goes to the log, where Snakemake sends the user, and it is re-raised so the job fails.
    """
    console = sys.stderr
    with open(smk.log[0], "w") as log_file, contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):

        def log(message: str) -> None:
            print(message, file=log_file, flush=True)

        try:
            with gpu_lease(smk, log):
                main(smk, log)
        except TransferGridError as error:
            log(f"error: {error}")
            print(f"transfergrid error in rule {smk.rule}: {error}", file=console)
            raise SystemExit(1) from None
        except Exception:
            log(f"unexpected error in rule {smk.rule}:\n{traceback.format_exc()}")
            raise


def gpu_lease(smk, log):
    """A job that requests a GPU (``resources: gpu``) holds one of the machine's GPUs for its
    lifetime (``gpus.lease_gpu``): concurrent jobs land on different GPUs. Other jobs hold none."""
    if not int(getattr(getattr(smk, "resources", None), "gpu", 0) or 0):
        return contextlib.nullcontext()
    devices = ((getattr(smk, "config", None) or {}).get("resources") or {}).get("gpu_devices")
    return lease_gpu(DEFAULT_LEASE_DIR, devices=devices, log=log)


def export_package_path(workflow_dir) -> None:
    """Make the package importable by every job's script: jobs inherit the environment, including
    jobs in conda environments and on cluster nodes (which re-read the workflow and call this)."""
    entries = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    if str(workflow_dir) not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(workflow_dir), *entries])
