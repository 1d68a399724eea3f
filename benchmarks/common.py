"""Run the workflow on a config in a fresh temporary directory and time it (no timed assertions:
benchmarks print figures, the machines are shared and noisy)."""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_grid(
    config: dict, cores: str = "all", keep: Path | None = None, targets: tuple[str, ...] = ("all",)
) -> tuple[float, Path]:
    """Seconds for `snakemake --cores <cores> <targets>` on ``config`` (cold unless ``keep`` holds an
    earlier run), and the run directory."""
    workdir = Path(keep or tempfile.mkdtemp(prefix="transfergrid-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    command = [
        sys.executable,
        "-m",
        "snakemake",
        *targets,  # before --quiet, which would take them as its own values
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        cores,
        "--quiet",
        "all",  # quiet about everything: the value of --quiet, not a target
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started, workdir


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def cleanup(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)


def train_rates(candidate_dir: Path, num_train: int) -> tuple[list[float], float]:
    """Train images per second of each epoch of a trained candidate (from its history.csv), and
    of its steady epochs together: every epoch after the first, which carries the warm-up."""
    with open(Path(candidate_dir) / "history.csv") as handle:
        seconds = [float(row["train_seconds"]) for row in csv.DictReader(handle)]
    steady = seconds[1:] or seconds
    return [num_train / s for s in seconds], num_train * len(steady) / sum(steady)


def child_command(script: str, child: str, workdir: Path, args: argparse.Namespace, keys: tuple[str, ...]) -> list[str]:
    """The command that runs ``script`` again as a child process doing ``child`` (a job, a variant),
    with the given options of ``args`` passed on: each measured job pays its own start-up."""
    command = [sys.executable, script, "--child", child, "--workdir", str(workdir)]
    for key in keys:
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return command
