"""A frozen grid of five heads must cost little more than one (target: 5 heads <= 1.3x the cold
wall time of 1 head): the backbone runs once per feature cache (rule extract_features), one job fits
every head and seed of a cache, and one evaluates them all on the cached test features.

    .venv/bin/python benchmarks/frozen_heads.py [--data digits,photos] [--no-cache]

Two data sets, each cold with 1 head (linear) and with all 5 heads, through the whole workflow
(report included):

- digits: the shipped default grid restricted to its digits data and the frozen strategy (two
  backbones, two fractions, three seeds, 64 px);
- photos: 448 JPEG photos of 500 x 375 (benchmarks/vs_tutorial.py writes them), efficientnet_lite0
  with its ImageNet weights at 224 px, three seeds.

--no-cache adds, for comparison, the 5-head grid with train.feature_cache off (every cell runs the
frozen backbone every epoch, as the PyTorch tutorial's fixed-feature-extractor recipe does).
Figures only, no assertions; run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import tempfile
from pathlib import Path

import pandas as pd
from common import cleanup, default_config, run_grid

ALL_HEADS = ["linear", "mlp", "gap", "svm", "logreg"]


def digits_grid() -> dict:
    config = copy.deepcopy(default_config())
    config["grid"].update(datasets=["digits"], strategies=["frozen"])
    return config


def photos_grid(photos: Path) -> dict:
    return {
        "datasets": {"photos": {"source": "folder", "path": str(photos)}},
        "grid": {
            "datasets": ["photos"],
            "backbones": [{"name": "efficientnet_lite0", "weights": ["imagenet_pkg"]}],
            "strategies": ["frozen"],
            "seeds": [0, 1, 2],
        },
        "train": {"image_size": 224, "augment": "none"},
    }


def with_heads(config: dict, heads: list[str], feature_cache: bool = True) -> dict:
    config = copy.deepcopy(config)
    config["grid"]["heads"] = heads
    config["train"]["feature_cache"] = feature_cache
    return config


def extraction_seconds(workdir: Path) -> float:
    """Seconds the backbone spent extracting features (from the extract_features logs)."""
    total = 0.0
    for log in (workdir / "results" / "logs" / "extract_features").rglob("*.log"):
        match = re.search(r"features \S+: (\{.*\})", log.read_text())
        total += ast.literal_eval(match.group(1))["seconds"] if match else 0.0
    return total


def timed(label: str, config: dict) -> float:
    """Cold wall time of the grid; prints it with the model compute (extraction and every fit)."""
    seconds, workdir = run_grid(config)
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    compute = extraction_seconds(workdir) + summary.wall_seconds.sum()
    cleanup(workdir)
    print(f"{label:<44} {len(summary):4d} cells  wall {seconds:7.1f} s  model compute {compute:7.1f} s", flush=True)
    return seconds


def compare(name: str, config: dict, no_cache: bool) -> None:
    one = timed(f"{name}: frozen, 1 head (linear)", with_heads(config, ["linear"]))
    five = timed(f"{name}: frozen, 5 heads", with_heads(config, ALL_HEADS))
    print(f"{name}: 5 heads / 1 head, cold wall time: {five / one:.2f}x (target <= 1.3x)", flush=True)
    if no_cache:
        uncached = timed(f"{name}: frozen, 5 heads, no feature cache", with_heads(config, ALL_HEADS, False))
        print(f"{name}: 5 heads without / with the feature cache: {uncached / five:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits,photos")
    parser.add_argument("--no-cache", action="store_true", help="also time 5 heads without the feature cache")
    args = parser.parse_args()
    data = args.data.split(",")
    if "digits" in data:
        compare("digits", digits_grid(), args.no_cache)
    if "photos" in data:
        from vs_tutorial import write_photos

        scratch = Path(tempfile.mkdtemp(prefix="transfergrid-frozen-heads-"))
        try:
            compare("photos 224px", photos_grid(write_photos(scratch / "photos")), args.no_cache)
        finally:
            cleanup(scratch)
    print("wall time includes one Python start-up per Snakemake job; local compute jobs fork from the fork server")


if __name__ == "__main__":
    main()
