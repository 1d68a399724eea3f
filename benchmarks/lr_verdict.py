"""Does the verdict between `frozen` and `full` survive giving each strategy its own learning rate?

    .venv/bin/python benchmarks/lr_verdict.py [--seeds 0,1,2] [--lrs]

One small grid (Fashion-MNIST from the Debian package, 40 images per class and split, 64 px,
efficientnet_lite0 with its packaged ImageNet weights, frozen and full with a linear head, 6 epochs,
three seeds), run cold three times with SGD at batch 32:

- one rate for both at the frozen head's rate (train.optimizer.lr 0.1),
- one rate for both at the PyTorch tutorial's rate (train.optimizer.lr 0.001),
- each strategy at its own rate (the default train.lr_by_strategy: frozen 0.1, full 0.01);

and, with --lrs, a fourth time with the default rates and the learning-rate search
grid.lrs [0.3, 1, 3] chosen on validation. Prints each run's leaderboard rows (mean validation and
test accuracy over seeds with their 95 % Student-t intervals, the top group of the paired test) and
which strategy wins. An experiment, not a speed benchmark.
"""

from __future__ import annotations

import argparse
import copy

import pandas as pd
from common import cleanup, run_grid

GRID = {
    "datasets": {"fashion": {"source": "builtin", "name": "fashion_mnist_debian", "max_per_class": 40}},
    "grid": {
        "datasets": ["fashion"],
        "backbones": [{"name": "efficientnet_lite0", "weights": ["imagenet_pkg"]}],
        "strategies": ["full", "frozen"],
        "heads": ["linear"],
    },
    "train": {
        "image_size": 64,
        "epochs": 6,
        "batch_size": 32,
        "augment": "none",
        "schedule": {"name": "step", "step_size": 4, "gamma": 0.1},
    },
    "resources": {"train_threads": 1},
}


def variant(seeds: list[int], lr: float | None = None, lrs: list[float] | None = None) -> dict:
    config = copy.deepcopy(GRID)
    config["grid"]["seeds"] = seeds
    if lr is not None:
        config["train"]["optimizer"] = {"lr": lr}
    if lrs:
        config["grid"]["lrs"] = lrs
    return config


def verdict(label: str, config: dict) -> None:
    _, workdir = run_grid(config, targets=("results/recipes.csv",))
    recipes = pd.read_csv(workdir / "results" / "recipes.csv")
    cleanup(workdir)
    print(f"\n== {label}")
    for row in recipes.itertuples():
        print(
            f"  {row.strategy:<7} lr {row.chosen_lrs:<14} val {row.val_acc_mean:.3f} ± {row.val_acc_ci_half_width:.3f}"
            f"   test {row.test_top1_mean:.3f} ± {row.test_top1_ci_half_width:.3f}   {row.comparison}"
        )
    best = recipes.sort_values("val_acc_mean", ascending=False).iloc[0]
    tied = recipes[recipes.in_top_group]
    print(f"  verdict: {best.strategy} is best on validation; top group: {', '.join(tied.strategy)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lrs", action="store_true", help="also run the learning-rate search [0.3, 1, 3]")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    verdict("one rate for both: 0.1 (the frozen head's)", variant(seeds, lr=0.1))
    verdict("one rate for both: 0.001 (the tutorial's)", variant(seeds, lr=0.001))
    verdict("each strategy its own rate (lr_by_strategy: frozen 0.1, full 0.01)", variant(seeds))
    if args.lrs:
        verdict("own rates x grid.lrs [0.3, 1, 3], chosen on validation", variant(seeds, lrs=[0.3, 1.0, 3.0]))


if __name__ == "__main__":
    main()
