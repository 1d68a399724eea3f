"""Dry run at scale: `snakemake -n` on grids of about 1,700 and 10,000 cells (issue 5: a 10,000-cell
grid under 30 s, no torch import while Snakemake parses the workflow).

.venv/bin/python benchmarks/dry_run.py [--grid small|large|both] [--lrs 1.0] [--profile OUT.prof] [--keep DIR]

Each grid is written to a fresh temporary directory (datasets are builtin digits under several
names; a dry run reads no data). Prints cells, planned jobs (the job-stats total of `snakemake -n
--quiet rules host`) and seconds. Three learning-rate candidates by default (`--lrs 1.0`: one, the
default of grid.lrs), so most cells are three training jobs, and every recipe (the cells that differ
only by seed) one evaluation job. With
--profile, the last grid also runs under cProfile and the 20 most expensive functions by
cumulative time are printed. Figures only, no assertions: machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, cleanup

sys.path.insert(0, str(ROOT / "workflow"))

# Every registered-weight combination the registry allows for these backbones, plus a pretrain
# source and a local checkpoint, so that every slug kind (and its hashing) is exercised.
BACKBONES = [
    {"name": "resnet18", "weights": ["none", "imagenet", "file:{workdir}/checkpoints/resnet18_custom.pt"]},
    {"name": "resnet50", "weights": ["none", "imagenet"]},
    {"name": "efficientnet_lite0", "weights": ["imagenet", "imagenet_pkg"]},
    {"name": "mobilenet_v3_small", "weights": ["none", "imagenet", "pretrain:{dataset}"]},
]
STRATEGIES = ["full", "frozen", "freeze:1", "freeze:2", "two_phase", "gradual", "scratch"]
HEADS = ["linear", "mlp", "gap", "svm", "logreg"]
LRS = [0.3, 1.0, 3.0]
FRACTIONS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
# (datasets, fractions, seeds): 242 cells per dataset, fraction and seed with the axes above, so
# 1,694 and 10,164 cells.
GRIDS = {
    "small": (1, FRACTIONS, [0]),
    "large": (2, FRACTIONS, [0, 1, 2]),
}


def grid_config(workdir: Path, datasets: int, fractions: list[float], seeds: list[int], lrs: list[float] = LRS) -> dict:
    names = [f"digits{i}" for i in range(datasets)]
    checkpoint = workdir / "checkpoints" / "resnet18_custom.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"")  # validation checks that the file exists; a dry run never reads it
    backbones = [
        {
            "name": entry["name"],
            "weights": [w.format(workdir=workdir, dataset=names[0]) for w in entry["weights"]],
        }
        for entry in BACKBONES
    ]
    return {
        "datasets": {name: {"source": "builtin", "name": "digits"} for name in names},
        "split": {"val": 0.15, "test": 0.15, "seed": 0},
        "grid": {
            "datasets": names,
            "fractions": fractions,
            "backbones": backbones,
            "strategies": STRATEGIES,
            "heads": HEADS,
            "seeds": seeds,
            "lrs": lrs,
        },
        # image_size null: every backbone's native size, looked up per cell from the registry.
        "train": {"image_size": None, "epochs": 2, "batch_size": 32, "augment": "none", "device": "cpu"},
        "resources": {"train_threads": 1, "cache_threads": 1, "train_mem_mb": 1000},
    }


def count_cells(config: dict) -> int:
    import copy

    from transfergrid.config import validate_config
    from transfergrid.grid import expand_cells

    config = validate_config(copy.deepcopy(config), ROOT / "workflow" / "schemas" / "config.schema.yaml")
    return len(expand_cells(config))


def dry_run(workdir: Path, profile: Path | None = None) -> tuple[float, int, str]:
    """Seconds of `snakemake -n` in ``workdir``, the planned job count and the job stats."""
    runner = ["-m", "cProfile", "-o", str(profile)] if profile else []
    command = [
        sys.executable,
        *runner,
        "-m",
        "snakemake",
        "-n",
        "--quiet",
        "rules",
        "host",
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--workflow-profile",
        "none",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    output = result.stdout + result.stderr
    stats = re.search(r"Job stats:\n(.*?)\n\n", output + "\n\n", re.S)
    total = re.search(r"^total\s+(\d+)", stats.group(1), re.M) if stats else None
    return seconds, int(total.group(1)) if total else 0, stats.group(1) if stats else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=[*GRIDS, "both"], default="both")
    parser.add_argument("--profile", type=Path, help="also run the last grid under cProfile into this file")
    parser.add_argument("--keep", type=Path, help="build the grids under this directory and keep them")
    parser.add_argument("--lrs", default=",".join(map(str, LRS)), help="grid.lrs, comma-separated")
    parser.add_argument("--stats", action="store_true", help="print the job stats table of each grid")
    args = parser.parse_args()
    names = list(GRIDS) if args.grid == "both" else [args.grid]
    for name in names:
        workdir = Path(tempfile.mkdtemp(prefix=f"transfergrid-dryrun-{name}-", dir=args.keep))
        config = grid_config(workdir, *GRIDS[name], lrs=[float(lr) for lr in args.lrs.split(",")])
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        cells = count_cells(config)
        seconds, jobs, stats = dry_run(workdir)
        print(f"{name}: {cells} cells, {jobs} planned jobs, snakemake -n {seconds:.1f} s", flush=True)
        if args.stats:
            print(stats)
        if args.profile and name == names[-1]:
            seconds, _, _ = dry_run(workdir, args.profile)
            print(f"{name} under cProfile: {seconds:.1f} s -> {args.profile}")
            pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(20)
        if not args.keep:
            cleanup(workdir)


if __name__ == "__main__":
    main()
