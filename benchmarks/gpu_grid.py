"""A small grid on the GPU through Snakemake and the GPU lease (train.device: cuda): per-cell times,
train images/s and peak GPU memory.

    python benchmarks/gpu_grid.py [--size 224] [--epochs 5] [--keep DIR]

The grid: scikit-learn's digits at ``--size`` px (offline, on any machine), efficientnet_lite0 with
its packaged ImageNet weights next to resnet18 from scratch, full fine-tuning and a frozen base
(linear head), two seeds. Every compute job requests ``gpu=1`` and takes its lease
(``transfergrid.gpus``), which its log shows. Runs `snakemake --cores all` to results/summary.csv
(the report is left out: it is CPU work) and prints one row per cell: how its base was fitted, the
wall seconds of its training job, train images/s of its steady epochs, its peak GPU memory and its
test accuracy, and the lease lines of the logs. Needs a CUDA GPU. Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_grid, train_rates


def grid_config(size: int, epochs: int, device: str = "cuda", seeds: tuple[int, ...] = (0, 1)) -> dict:
    return {
        "datasets": {"digits": {"source": "builtin", "name": "digits"}},
        "grid": {
            "datasets": ["digits"],
            "backbones": [
                {"name": "efficientnet_lite0", "weights": ["imagenet_pkg"]},
                {"name": "resnet18", "weights": ["none"]},
            ],
            "strategies": ["full", "frozen"],
            "heads": ["linear"],
            "seeds": list(seeds),
        },
        "train": {"image_size": size, "epochs": epochs, "batch_size": 64, "augment": "none", "device": device},
        "resources": {"train_threads": 2, "cache_threads": 4},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="run directory to keep (default: a temporary one)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--device", default="cuda", help="cpu only to try this script on a machine without a GPU")
    args = parser.parse_args()

    seconds, workdir = run_grid(
        grid_config(args.size, args.epochs, args.device, tuple(int(seed) for seed in args.seeds.split(","))),
        keep=args.keep,
        targets=("results/summary.csv",),
    )
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    print(f"\ngrid to results/summary.csv: {len(summary)} cells in {seconds:.1f} s (cold, start-ups included)\n")
    rows = []
    for cell in summary.itertuples():
        candidate = workdir / cell.candidate_dir
        train = json.loads((candidate / "train.json").read_text())
        rate = train_rates(candidate, train["num_train"])[1] if train.get("fit") == "through_network" else None
        memory = train.get("peak_gpu_memory_mb")
        rows.append(
            {
                "backbone": f"{cell.backbone}/{cell.weights}",
                "strategy": cell.strategy,
                "seed": cell.seed,
                "fit": train.get("fit"),
                "device": train.get("device"),
                "precision": train.get("precision") or "-",
                "train job s": round(train["wall_seconds"], 1),
                "train img/s": round(rate) if rate else "-",
                "peak GPU MB": round(memory) if memory is not None else "-",
                "test top1": round(cell.test_top1, 3),
            }
        )
    print(pd.DataFrame(rows).to_string(index=False))
    logs = list((workdir / "results" / "logs").rglob("*.log"))
    leases = sorted(
        {
            line.strip()
            for log in logs
            for line in log.read_text().splitlines()
            if "leased GPU" in line or "GPU chosen" in line or "waiting for a free GPU" in line
        }
    )
    jobs_with_lease = sum(1 for log in logs if "leased GPU" in log.read_text())
    print(f"\n{jobs_with_lease} job logs hold a GPU lease; distinct lease lines: {leases[:5]}")
    print(f"run directory: {workdir}")


if __name__ == "__main__":
    main()
