"""A frozen grid of five heads must cost little more than one: the backbone runs once per
backbone x weights x dataset (rule extract_features), and every head trains on cached features.

    .venv/bin/python benchmarks/frozen_heads.py

Prints the cold wall time of a frozen grid with 1 head and with 5 heads on the default data and
backbones, and for comparison the 5-head grid with the feature cache switched off (every cell runs
the frozen backbone every epoch, as in the PyTorch tutorial's fixed-feature-extractor recipe).
"""

import copy

from common import cleanup, default_config, run_grid

ALL_HEADS = ["linear", "mlp", "gap", "svm", "logreg"]


def frozen_grid(heads: list[str], feature_cache: bool = True) -> dict:
    config = copy.deepcopy(default_config())
    config["grid"].update(strategies=["frozen"], heads=heads)
    config["train"]["feature_cache"] = feature_cache
    return config


def timed(label: str, config: dict) -> float:
    seconds, workdir = run_grid(config)
    cleanup(workdir)
    print(f"{label:<40} {seconds:7.1f} s", flush=True)
    return seconds


def main() -> None:
    one = timed("frozen, 1 head (linear)", frozen_grid(["linear"]))
    five = timed("frozen, 5 heads, feature cache", frozen_grid(ALL_HEADS))
    uncached = timed("frozen, 5 heads, no feature cache", frozen_grid(ALL_HEADS, feature_cache=False))
    print(f"5 heads / 1 head with the feature cache: {five / one:.2f}x")
    print(f"5 heads without / with the feature cache: {uncached / five:.2f}x")


if __name__ == "__main__":
    main()
