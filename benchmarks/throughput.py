"""Fine-tuning throughput of one training cell, end to end, data pipeline included (issue: resnet50
at 224 px, at least 5,000 images/s on one H100).

    .venv/bin/python benchmarks/throughput.py [--backbone resnet50] [--images 24000] [--size 224]
        [--batch-size 256] [--epochs 3] [--variants eager,benchmark,compile] [--device auto]

Writes a synthetic uint8 image cache with ``benchmarks/memory.py`` (noise tinted per class, 10
classes, the workflow's own cache, split and classes files), then trains the cell the workflow
would run, ``cell.train_candidate`` (full fine-tuning, linear head, ``augment: standard``, the
schema's defaults for the rest: bf16 autocast and channels-last where the hardware does them), once
per variant, each in a fresh process as a Snakemake job would be: ``eager`` as configured by
default, ``benchmark`` with ``train.cudnn_benchmark``, ``compile`` with ``train.compile``. Nothing
is left out of the figures: the rows go from the memory-mapped cache to the device, are normalised
and augmented there, every epoch ends with its validation pass.

Prints, per variant: train images/s of each epoch (the first one includes CUDA's warm-up, cuDNN's
timing runs and compilation where they apply), the steady state (the epochs after the first),
images trained per second of the whole job (model build, the copy of the rows to the device,
validation passes and compilation included), and the peak GPU memory. Figures only, no
assertions; time it alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))  # this checkout's package, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import child_command, train_rates  # noqa: E402
from memory import write_dataset  # noqa: E402

FRACTION = 1.0


def settings_of(args: argparse.Namespace, variant: str):
    from transfergrid.config import apply_schema, load_schema
    from transfergrid.docs import SCHEMA
    from transfergrid.grid import cell_settings
    from transfergrid.naming import Cell, format_fraction

    train = {
        "image_size": args.size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "augment": "standard",
        "device": args.device,
        "compile": variant == "compile",
        "cudnn_benchmark": variant == "benchmark",
        # A modest rate: random weights on synthetic data must not diverge before they are timed.
        "optimizer": {"lr": 0.002},
    }
    config = apply_schema({"train": train}, load_schema(SCHEMA))
    return cell_settings(
        config, Cell("synthetic", format_fraction(FRACTION), args.backbone, "none", "full", "linear", 0)
    )


def run_variant(args: argparse.Namespace, workdir: Path, cache: Path, variant: str) -> dict:
    from transfergrid.cell import CellInputs, train_candidate

    inputs = CellInputs(split=workdir / "split.csv", classes=workdir / "classes.json", cache=cache)
    started = time.perf_counter()
    result = train_candidate(settings_of(args, variant), inputs, workdir / variant, args.threads, log=lambda line: None)
    job_seconds = time.perf_counter() - started
    summary = result.summary
    if summary["status"] != "trained":
        raise SystemExit(f"{variant}: {summary['reason']}")
    per_epoch, steady = train_rates(workdir / variant, summary["num_train"])
    return {
        "variant": variant,
        "per_epoch": per_epoch,
        "steady": steady,
        "whole_job": summary["num_train"] * len(per_epoch) / job_seconds,
        "job_seconds": job_seconds,
        "num_train": summary["num_train"],
        "num_val": summary["num_val"],
        "precision": summary["precision"],
        "device": summary["device"],
        "peak_gpu_memory_mb": summary.get("peak_gpu_memory_mb"),
    }


def measure(args: argparse.Namespace, workdir: Path, variant: str) -> dict:
    """One variant in a child process, as a Snakemake job: it pays its own CUDA start-up."""
    keys = ("backbone", "images", "size", "batch_size", "epochs", "device", "threads")
    command = child_command(__file__, variant, workdir, args, keys)
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--images", type=int, default=24_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", default="eager,benchmark,compile", help="of eager, benchmark, compile")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the job (as resources.train_threads)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        cache = args.workdir / f"{args.size}px.npy"
        print(json.dumps(run_variant(args, args.workdir, cache, args.child)))
        return

    workdir = Path(tempfile.mkdtemp(prefix="transfergrid-throughput-"))
    try:
        started = time.perf_counter()
        write_dataset(workdir, args.images, args.size, FRACTION)
        print(f"cache: {args.images} images at {args.size} px in {time.perf_counter() - started:.0f} s", flush=True)
        rows = []
        for variant in args.variants.split(","):
            row = measure(args, workdir, variant)
            rows.append(row)
            epochs = ", ".join(f"{rate:.0f}" for rate in row["per_epoch"])
            memory = f"{row['peak_gpu_memory_mb']:.0f} MB" if row["peak_gpu_memory_mb"] is not None else "-"
            print(
                f"{args.backbone} {variant} on {row['device']} ({row['precision']}), batch {args.batch_size}, "
                f"{row['num_train']} train / {row['num_val']} val rows: train images/s per epoch [{epochs}]; "
                f"steady {row['steady']:.0f}; whole job {row['whole_job']:.0f} ({row['job_seconds']:.1f} s); "
                f"peak GPU memory {memory}",
                flush=True,
            )
        print(f"\n{'variant':10}{'steady img/s':>14}{'whole job img/s':>17}{'job s':>8}{'peak GPU MB':>13}")
        for row in rows:
            memory = f"{row['peak_gpu_memory_mb']:.0f}" if row["peak_gpu_memory_mb"] is not None else "-"
            print(
                f"{row['variant']:10}{row['steady']:14.0f}{row['whole_job']:17.0f}{row['job_seconds']:8.1f}{memory:>13}"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
