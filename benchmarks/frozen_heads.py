"""A frozen grid of five heads must cost little more than one: the backbone runs once per
backbone x weights x dataset (rule extract_features), and every head trains on cached features.

    .venv/bin/python benchmarks/frozen_heads.py

Prints the cold wall time of a frozen grid with 1 head and with 5 heads on the default data and
backbones, and for comparison the 5-head grid with the feature cache switched off (every cell runs
the frozen backbone every epoch, as in the PyTorch tutorial's fixed-feature-extractor recipe).
"""

import ast
import copy
import re
from pathlib import Path

import pandas as pd
from common import cleanup, default_config, run_grid

ALL_HEADS = ["linear", "mlp", "gap", "svm", "logreg"]


def frozen_grid(heads: list[str], feature_cache: bool = True) -> dict:
    config = copy.deepcopy(default_config())
    config["grid"].update(strategies=["frozen"], heads=heads)
    config["train"]["feature_cache"] = feature_cache
    return config


def extraction_seconds(workdir: Path) -> float:
    """Seconds the backbone spent extracting features (from the extract_features logs)."""
    total = 0.0
    for log in (workdir / "results" / "logs" / "extract_features").glob("*.log"):
        match = re.search(r"features \S+: (\{.*\})", log.read_text())
        total += ast.literal_eval(match.group(1))["seconds"] if match else 0.0
    return total


def timed(label: str, config: dict) -> tuple[float, float]:
    """Wall time of the cold grid, and model compute: feature extraction plus every cell's fit."""
    seconds, workdir = run_grid(config)
    compute = extraction_seconds(workdir) + pd.read_csv(workdir / "results" / "summary.csv").wall_seconds.sum()
    cleanup(workdir)
    print(f"{label:<36} wall {seconds:7.1f} s   model compute {compute:7.1f} s", flush=True)
    return seconds, compute


def main() -> None:
    one = timed("frozen, 1 head (linear)", frozen_grid(["linear"]))
    five = timed("frozen, 5 heads, feature cache", frozen_grid(ALL_HEADS))
    uncached = timed("frozen, 5 heads, no feature cache", frozen_grid(ALL_HEADS, feature_cache=False))
    print(
        f"5 heads / 1 head with the feature cache: wall {five[0] / one[0]:.2f}x, model compute {five[1] / one[1]:.2f}x"
    )
    print(
        f"5 heads without / with the feature cache: wall {uncached[0] / five[0]:.2f}x, "
        f"model compute {uncached[1] / five[1]:.2f}x"
    )
    print("wall time includes one Python start-up and library import per Snakemake job (about 3-5 s here)")


if __name__ == "__main__":
    main()
